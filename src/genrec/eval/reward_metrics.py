"""R@K (the paper's reward metric): for each request, the highest reward among the top K generated items,
averaged over requests. A slot that is no item (-1) scores 0.

Two scorers: the reward model's r_pref (what alignment optimised), and, on the simulator, the true
preference p(click | examined) of the user on the request's day (what alignment should have improved).
A gap between the two is reward hacking made visible.
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.model.vocab import SidMap
from genrec.reward.sim_model import SimRewardModel, history_rows


def reward_at_k(values: np.ndarray, ks: list[int]) -> dict[str, float]:
    """values (N, B): the reward of each ranked slot, best first -> {r@K: mean over requests of the max of the top K}."""
    return {f"r@{k}": float(values[:, :k].max(axis=1).mean()) for k in ks}


def reward_model_values(model: SimRewardModel, sid_map: SidMap, long_histories: list[list[int]], ranked: np.ndarray,
                        max_history: int) -> np.ndarray:
    """(N, B) r_pref of every ranked item for its request's history; 0 where the slot is no item."""
    n, b = ranked.shape
    hist = history_rows(long_histories, sid_map, max_history, "a test history").repeat_interleave(b, dim=0)
    flat = ranked.reshape(-1)
    rows = np.zeros(len(flat), np.int64)
    rows[flat >= 0] = sid_map.rows(flat[flat >= 0], "the ranked items") + 1
    return model.score(hist, torch.from_numpy(rows)).reshape(n, b)


def true_preference_values(truth, users: np.ndarray, days: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """(N, B) the simulator's true preference of each ranked item; 0 where the slot is no item."""
    n, b = ranked.shape
    items = np.where(ranked >= 0, ranked, 0)
    p = truth.click_probability(np.repeat(users, b).reshape(n, b), items, np.repeat(days, b).reshape(n, b))
    return np.where(ranked >= 0, p, 0.0)
