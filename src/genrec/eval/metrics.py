"""Ranking metrics over requests with several true items each.

For a request with ranked list r (best first, -1 for an empty or invalid slot) and true item set T:
- HR@K = 1 if any item of T is among r[:K], else 0 ("hit": at least one true item retrieved);
- NDCG@K = DCG@K / IDCG@K with binary relevance, DCG@K = sum over ranks i <= K of 1[r_i in T] / log2(i + 1),
  IDCG@K = the DCG of a perfect list, sum over i <= min(|T|, K) of 1 / log2(i + 1). With one true item per
  request (leave-one-out) HR@K is the usual Recall@K and NDCG@K the usual NDCG@K.
- Recall@K (reported beside HR) = |T & r[:K]| / |T|.
An item repeated in r counts once (at its best rank). Every metric is averaged over requests.
HaR = share of generated SIDs (all beams of all requests, unconstrained decoding) that map to no item.
"""

from __future__ import annotations

import numpy as np


def ranking_metrics(ranked: np.ndarray, truths: list[set[int]], ks: list[int]) -> dict[str, float]:
    """HR@K, NDCG@K and Recall@K for each K, averaged over requests (rows of `ranked`)."""
    if len(ranked) != len(truths):
        raise ValueError(f"{len(ranked)} ranked lists for {len(truths)} requests")
    if any(not t for t in truths):
        raise ValueError("a request without a true item cannot be scored (filter such requests first)")
    discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    out: dict[str, float] = {}
    for k in ks:
        if k > ranked.shape[1]:
            raise ValueError(f"K={k} exceeds the {ranked.shape[1]} ranked items per request (raise the beam width)")
        hr, ndcg, recall = [], [], []
        for row, truth in zip(ranked, truths):
            seen: set[int] = set()
            rel = np.zeros(k)
            for i, item in enumerate(row[:k]):
                if item in truth and item not in seen:
                    rel[i] = 1.0
                seen.add(int(item))
            hits = rel.sum()
            hr.append(float(hits > 0))
            recall.append(hits / len(truth))
            ndcg.append(float(rel @ discounts[:k]) / float(discounts[:min(len(truth), k)].sum()))
        out[f"hr@{k}"], out[f"ndcg@{k}"], out[f"recall@{k}"] = map(lambda v: float(np.mean(v)), (hr, ndcg, recall))
    return out


def hallucination_rate(items: np.ndarray) -> float:
    """Share of generated SIDs that are no item (item id -1)."""
    return float(np.mean(np.asarray(items) == -1)) if np.size(items) else float("nan")
