"""Training and measuring the reward model: binary cross-entropy on labelled exposures; AUC, log loss and
calibration on held-out exposures."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score
from tqdm import tqdm

from genrec.config import RewardConfig
from genrec.reward.exposures import Exposures, exposure_log_share
from genrec.reward.sim_model import SimRewardModel


def train_reward_model(model: SimRewardModel, data: Exposures, cfg: RewardConfig, seed: int,
                       on_log: Callable[[int, dict], None] = lambda step, row: None) -> list[dict]:
    """Fit `model` in place (BCE on the exposures, + the catalog softmax when its weight is > 0); returns the logged
    rows (step, loss = the total, bce, lr = the rate the next step uses, epoch). The learning rate follows
    `cfg.lr_schedule` over all steps."""
    torch.manual_seed(seed)
    # Start the click logit at the base rate's log-odds, so the first steps learn preference, not the base rate.
    rate = float(np.clip(data.label.mean(), 1e-4, 1 - 1e-4)) if len(data) else 0.5
    with torch.no_grad():
        model.mlp[-1].bias.fill_(float(np.log(rate / (1 - rate))))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * ((len(data) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg.lr_schedule, s, total))
    label = torch.from_numpy(data.label)
    row = torch.from_numpy(data.row)
    page = torch.from_numpy(data.page)
    logq = None
    if cfg.catalog_softmax_logq > 0:
        logq = torch.as_tensor(cfg.catalog_softmax_logq * exposure_log_share(data.row, len(model.item_ids)),
                               dtype=torch.float32)
    history, step, rows, window = data.history, 0, [], []
    bar = tqdm(total=total, desc="train-reward", unit="step")
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(data)))
        for lo in range(0, len(data), cfg.batch_size):
            idx = order[lo:lo + cfg.batch_size]
            hist = history[page[idx]]
            logits = model(hist, row[idx])
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, label[idx])
            loss = bce
            if cfg.catalog_softmax_weight > 0:
                loss = loss + cfg.catalog_softmax_weight * catalog_softmax_loss(model, hist, row[idx], label[idx],
                                                                                 logq)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            window.append((float(loss.detach()), float(bce.detach())))
            bar.update(1)
            if step % 50 == 0 or step == total:
                mean_loss, mean_bce = np.mean(window, axis=0)
                rows.append({"step": step, "loss": float(mean_loss), "bce": float(mean_bce),
                             "lr": opt.param_groups[0]["lr"], "epoch": epoch + lo / len(data)})
                on_log(step, rows[-1])
                bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
                window = []
    bar.close()
    return rows


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The multiple of the base learning rate at `step` of `total`: 1 (constant) or 1 - step / total (linear)."""
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, 1.0 - step / max(total, 1))
    raise ValueError(f"reward.lr_schedule must be constant or linear, got {schedule!r}")


def catalog_softmax_loss(model: SimRewardModel, history: torch.Tensor, rows: torch.Tensor,
                         label: torch.Tensor, logq: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each engaged exposure's item among the whole catalog, scored by `model.catalog_logits`
    (+ `logq`, one fixed offset per item, when given).

    The exposure BCE sees only the few items a page showed; this loss also pushes the history's mean away from
    every item the user did not engage with, which shapes the item vectors from far more comparisons. A user can
    only click what she was shown, so a click's item follows the logging policy's exposures as much as her taste;
    `logq` (the weighted log exposure share, `reward.catalog_softmax_logq`) hands that part to a fixed prior, as
    sampled softmax corrects for its sampler, and leaves the cosine to learn the preference.
    Zero when the batch has no engaged exposure."""
    pos = label > 0
    if not bool(pos.any()):
        return torch.zeros((), device=label.device)
    logits = model.catalog_logits(history[pos])
    if logq is not None:
        logits = logits + logq
    return torch.nn.functional.cross_entropy(logits, rows[pos] - 1)


def predict(model: SimRewardModel, data: Exposures) -> np.ndarray:
    """r_pref of every exposure of `data`."""
    return model.score(data.history[torch.from_numpy(data.page)], torch.from_numpy(data.row))


def calibration_table(prob: np.ndarray, label: np.ndarray, bins: int = 10) -> list[dict]:
    """Per equal-width bin of predicted probability: count, mean prediction, observed rate."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        if m.any():
            out.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "n": int(m.sum()),
                        "mean_pred": float(prob[m].mean()), "observed": float(label[m].mean())})
    return out


def classification_metrics(prob: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """AUC, log loss, mean prediction vs observed rate and the expected calibration error (10 bins)."""
    if len(np.unique(label)) < 2:
        raise ValueError(f"AUC needs both labels among {len(label)} exposures (positives: {int(label.sum())})")
    table = calibration_table(prob, label)
    ece = sum(r["n"] * abs(r["mean_pred"] - r["observed"]) for r in table) / len(label)
    return {"auc": float(roc_auc_score(label, prob)), "log_loss": float(log_loss(label, np.clip(prob, 1e-7, 1 - 1e-7))),
            "mean_pred": float(prob.mean()), "positive_rate": float(label.mean()), "ece": float(ece)}
