"""Collaborative fine-tuning: items that users engage with in the same session should land close.

A projection head (initialised to the identity, so "before" is the encoder's own space) plus a per-item
residual (initialised to zero, weight-decayed) are trained with a symmetric InfoNCE loss on co-engagement
pairs, the other pairs of a batch serving as negatives. The head moves the whole space (it generalises to
items without pairs); the residual carries what the text cannot know, such as popularity.
Measured by held-out recall@10: for a held-out pair (a, b), is b among the 10 items nearest to a
(a itself excluded) in the whole catalog, and vice versa.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch
from tqdm import tqdm

from genrec.config import FinetuneConfig


@dataclass
class FinetuneResult:
    embeddings: np.ndarray  # (n_items, d) of the chosen epoch, L2-normalised
    head_weight: np.ndarray | None  # (d, d) of the chosen epoch: embeddings = normalise(base @ W.T + residual);
    #                                None when the encoder itself was fine-tuned
    residual: np.ndarray | None  # (n_items, d) of the chosen epoch, or None when residuals are off
    recall_before: float
    recall_after: float
    n_train_pairs: int
    n_heldout_pairs: int
    losses: list[float]


def split_pairs(pairs: np.ndarray, weights: np.ndarray, heldout_fraction: float, max_pairs: int, seed: int):
    """Keep the `max_pairs` most frequent pairs; hold out a random share of them."""
    order = np.argsort(-weights, kind="stable")[:max_pairs]
    pairs, weights = pairs[order], weights[order]
    rng = np.random.default_rng(seed)
    held = rng.random(len(pairs)) < heldout_fraction
    return pairs[~held], weights[~held], pairs[held]


def recall_at_k(emb: np.ndarray, pairs: np.ndarray, k: int = 10) -> float:
    """Share of (a -> b) and (b -> a) where the partner is among a's k nearest items (a excluded)."""
    if len(pairs) == 0:
        return float("nan")
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb, dtype=np.float32))
    queries = np.concatenate([pairs[:, 0], pairs[:, 1]])
    targets = np.concatenate([pairs[:, 1], pairs[:, 0]])
    _, nn = index.search(np.ascontiguousarray(emb[queries]), k + 1)
    hits = [(t in row[row != q][:k]) for q, t, row in zip(queries, targets, nn)]
    return float(np.mean(hits))


def info_nce(a: torch.Tensor, b: torch.Tensor, batch: np.ndarray, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of pairs (rows of `batch`, normalised vectors a[i], b[i]); the other
    pairs' items are the negatives. An item can repeat within a batch: a copy of the positive is no
    negative, so it is masked out in each direction."""
    logits = a @ b.T / temperature
    eye = torch.eye(len(batch), dtype=torch.bool)
    same_b = torch.from_numpy(batch[:, 1][None, :] == batch[:, 1][:, None]) & ~eye
    same_a = torch.from_numpy(batch[:, 0][None, :] == batch[:, 0][:, None]) & ~eye
    target = torch.arange(len(batch))
    return (torch.nn.functional.cross_entropy(logits.masked_fill(same_b, float("-inf")), target)
            + torch.nn.functional.cross_entropy(logits.T.masked_fill(same_a, float("-inf")), target)) / 2


def steps_per_epoch(n_train: int, cfg: FinetuneConfig) -> int:
    """Batches per epoch: one pass over the training pairs, capped by cfg.max_steps_per_epoch (0: no cap)."""
    steps = max(1, int(np.ceil(n_train / cfg.batch_size))) if n_train else 0
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


def finetune_head(emb: np.ndarray, pairs: np.ndarray, weights: np.ndarray, cfg: FinetuneConfig, seed: int) -> FinetuneResult:
    """Train the projection head on `pairs` (row indices into emb) and report recall@10 before and after.

    Runs with torch's deterministic algorithms: without them two runs of the same seed differed in the last
    bits of the head on small catalogs (the residual's scatter-add backward sums in thread order), enough to
    move an item across an RQ-KMeans boundary, so that its SID and everything trained after it differed.
    """
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train_head(emb, pairs, weights, cfg, seed)
    finally:
        torch.use_deterministic_algorithms(was)


def _train_head(emb: np.ndarray, pairs: np.ndarray, weights: np.ndarray, cfg: FinetuneConfig, seed: int) -> FinetuneResult:
    train, train_w, held = split_pairs(pairs, weights, cfg.heldout_fraction, cfg.max_pairs, seed)
    before = recall_at_k(emb, held)
    # Model selection on a validation share of the training pairs (never on the held-out pairs): the epoch
    # with the best validation recall wins, and "no fine-tuning" (epoch 0) is one of the candidates.
    train, train_w, valid = split_pairs(train, train_w, cfg.heldout_fraction, len(train), seed + 1)
    torch.manual_seed(seed)
    d = emb.shape[1]
    head = torch.nn.Linear(d, d, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(d))
    x = torch.from_numpy(emb)
    # A per-item collaborative residual (zero at the start): what co-engagement says about an item that its
    # text cannot (popularity, complements across categories). Items without pairs keep a zero residual.
    residual = torch.nn.Parameter(torch.zeros_like(x)) if cfg.item_residual else None

    def project(rows: np.ndarray | slice) -> torch.Tensor:
        out = head(x[rows])
        return out + residual[rows] if residual is not None else out

    params = [{"params": head.parameters(), "weight_decay": 0.0}]
    if residual is not None:
        # Adam moves every touched residual by ~lr per step whatever its gradient: a smaller rate keeps
        # them a correction to the text embedding rather than a replacement.
        params.append({"params": [residual], "weight_decay": cfg.residual_weight_decay, "lr": cfg.lr * cfg.residual_lr_scale})
    opt = torch.optim.AdamW(params, lr=cfg.lr)

    def snapshot() -> np.ndarray:
        with torch.no_grad():
            return torch.nn.functional.normalize(project(slice(None)), dim=-1).numpy().astype(np.float32)

    def state() -> tuple[np.ndarray, np.ndarray | None]:
        return head.weight.detach().numpy().copy(), None if residual is None else residual.detach().numpy().copy()

    best_emb, best_valid, best_state = emb, recall_at_k(emb, valid), state()
    rng = np.random.default_rng(seed)
    p = train_w / train_w.sum() if len(train_w) else None
    steps = steps_per_epoch(len(train), cfg)
    losses: list[float] = []
    for _ in tqdm(range(cfg.epochs if steps else 0), desc="fine-tune head", unit="epoch"):
        for _ in range(steps):
            batch = train[rng.choice(len(train), size=min(cfg.batch_size, len(train)), replace=True, p=p)]
            a = torch.nn.functional.normalize(project(batch[:, 0]), dim=-1)
            b = torch.nn.functional.normalize(project(batch[:, 1]), dim=-1)
            loss = info_nce(a, b, batch, cfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
        current = snapshot()
        score = recall_at_k(current, valid)
        if score > best_valid:
            best_emb, best_valid, best_state = current, score, state()
    return FinetuneResult(best_emb, best_state[0], best_state[1], before, recall_at_k(best_emb, held), len(train),
                          len(held), losses)
