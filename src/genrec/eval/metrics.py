"""Ranking metrics over requests with several true items each.

For a request with ranked list r (best first, -1 for an empty or invalid slot) and true item set T:
- HR@K = 1 if any item of T is among r[:K], else 0 ("hit": at least one true item retrieved);
- NDCG@K = DCG@K / IDCG@K with binary relevance, DCG@K = sum over ranks i <= K of 1[r_i in T] / log2(i + 1),
  IDCG@K = the DCG of a perfect list, sum over i <= min(|T|, K) of 1 / log2(i + 1). With one true item per
  request (leave-one-out) HR@K is the usual Recall@K and NDCG@K the usual NDCG@K.
- Recall@K (reported beside HR) = |T & r[:K]| / |T|.
An item repeated in r counts once (at its best rank). Every metric is averaged over requests.
HaR = share of generated SIDs (unconstrained decoding) that map to no item, over all beams of all requests or over
each request's top-1 beam. Free-decoding HR (as the paper pairs HR with HaR) is HR@K of the unconstrained beams,
where a SID that is no item is a miss.
Intervals: percentile bootstrap over requests of the per-request values (`per_request_metrics`).
"""

from __future__ import annotations

import numpy as np


def per_request_metrics(ranked: np.ndarray, truths: list[set[int]], k: int) -> dict[str, np.ndarray]:
    """HR@K, NDCG@K and Recall@K of each request (rows of `ranked`): arrays of length N, for means and intervals."""
    if len(ranked) != len(truths):
        raise ValueError(f"{len(ranked)} ranked lists for {len(truths)} requests")
    if any(not t for t in truths):
        raise ValueError("a request without a true item cannot be scored (filter such requests first)")
    if k > ranked.shape[1]:
        raise ValueError(f"K={k} exceeds the {ranked.shape[1]} ranked items per request (raise the beam width)")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    hr, ndcg, recall = np.zeros(len(truths)), np.zeros(len(truths)), np.zeros(len(truths))
    for n, (row, truth) in enumerate(zip(ranked, truths)):
        seen: set[int] = set()
        rel = np.zeros(k)
        for i, item in enumerate(row[:k]):
            if item in truth and item not in seen:
                rel[i] = 1.0
            seen.add(int(item))
        hits = rel.sum()
        hr[n], recall[n] = float(hits > 0), hits / len(truth)
        ndcg[n] = float(rel @ discounts) / float(discounts[:min(len(truth), k)].sum())
    return {f"hr@{k}": hr, f"ndcg@{k}": ndcg, f"recall@{k}": recall}


def ranking_metrics(ranked: np.ndarray, truths: list[set[int]], ks: list[int]) -> dict[str, float]:
    """HR@K, NDCG@K and Recall@K for each K, averaged over requests (rows of `ranked`)."""
    out: dict[str, float] = {}
    for k in ks:
        out |= {name: float(v.mean()) for name, v in per_request_metrics(ranked, truths, k).items()}
    return out


def bootstrap_interval(values: np.ndarray, seed: int, resamples: int = 1000, level: float = 0.95
                       ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-request `values` (requests resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for b in range(resamples):  # a loop, not an (resamples, N) matrix: N may be all of Beauty's 22k users
        means[b] = values[rng.integers(0, values.size, values.size)].mean()
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def hallucination_rate(items: np.ndarray, top: int | None = None) -> float:
    """Share of generated SIDs that are no item (item id -1): over all beams, or over each request's first `top`."""
    items = np.asarray(items)
    items = items if top is None else items[:, :top]
    return float(np.mean(items == -1)) if np.size(items) else float("nan")
