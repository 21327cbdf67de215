"""The hybrid gated reward of GRPO-SR (paper eq. 6-7) and group-relative advantages.

r_i = G_i * r_pref_i with the gate G_i = 1[s_i > tau]. Our relevance score s_i is the cosine similarity
between the rollout item's embedding (embed-items' vectors, the same space the SIDs were cut from) and
the mean embedding of the user's most recent history items: an item far from anything the user has
recently engaged with earns nothing however much the reward model likes it, which is what stops the
policy from drifting to items the reward model over-scores (reward hacking).
A rollout that is no item earns 0. Calibration (eq. 7): a rollout that hits one of the page's engaged
items (ordered, carted or clicked) gets exactly the group's maximum gated reward, so the true outcome is
never ranked below a guess; a hit that the gate zeroed is raised to that maximum, not to its own ungated
score.
"""

from __future__ import annotations

import numpy as np

from genrec.errors import InputDataError


class ItemEmbeddings:
    """Unit-normalised item vectors by item id (embed-items' embeddings.npy + item_ids.npy)."""

    def __init__(self, item_ids: np.ndarray, vectors: np.ndarray):
        v = np.asarray(vectors, dtype=np.float32)
        self.vectors = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        self._row = {int(i): r for r, i in enumerate(item_ids)}

    def rows(self, items) -> np.ndarray:
        """Rows of `items`; an item without a vector is an error (embed-items must cover the SID table's items)."""
        out = np.asarray([self._row.get(int(i), -1) for i in items], dtype=np.int64)
        if (out < 0).any():
            missing = sorted({int(i) for i, r in zip(items, out) if r < 0})
            raise InputDataError(f"{len(missing)} items have no embedding (first: {missing[:10]}); the embeddings and "
                                 "the SID table come from different runs of embed-items / assign-sids")
        return out

    def relevance(self, histories: list[list[int]], items: np.ndarray, recent: int) -> np.ndarray:
        """(N, G) cosine of each item to the mean of its request's last `recent` history items; -1 for no item."""
        out = np.full(items.shape, -1.0, dtype=np.float32)
        for r, hist in enumerate(histories):
            if len(hist) == 0:
                continue
            user = self.vectors[self.rows(hist[-recent:])].mean(0)
            user /= max(float(np.linalg.norm(user)), 1e-12)
            ok = items[r] >= 0
            out[r, ok] = self.vectors[self.rows(items[r][ok])] @ user
        return out


def hybrid_rewards(r_pref: np.ndarray, relevance: np.ndarray, valid: np.ndarray, hits: np.ndarray, tau: float,
                   gate: bool, calibrate: bool) -> np.ndarray:
    """(N, G) rewards: gate * r_pref, 0 for invalid rollouts, valid hits set to the group's maximum (eq. 7)."""
    reward = np.where(valid, r_pref, 0.0).astype(np.float64)
    if gate:
        reward = np.where(relevance > tau, reward, 0.0)
    if calibrate:
        group_max = reward.max(axis=1, keepdims=True)
        reward = np.where(hits & valid, group_max, reward)
    return reward


def group_advantages(rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """(N, G) advantages: reward minus the group mean over the group's standard deviation; 0 in an all-equal group."""
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True)
    return np.where(std > eps, (rewards - mean) / np.maximum(std, eps), 0.0)
