"""How good the semantic IDs are: utilisation, crowding, reconstruction, collisions, category recovery."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from genrec.sid.rqkmeans import RQCodebooks


def sid_quality(x: np.ndarray, codes: np.ndarray, inputs: list[np.ndarray], books: RQCodebooks,
                categories: list[str | None] | None) -> dict:
    """Figures per level plus, where items have category paths, NMI of level-1 codes with the categories."""
    total = float(((x - x.mean(0)) ** 2).sum(1).mean())  # variance around the mean: a shared offset explains nothing
    out: dict = {}
    for level, cent in enumerate(books.centroids):
        k = cent.shape[0]
        used = np.bincount(codes[:, level], minlength=k)
        err = float(((inputs[level] - cent[codes[:, level]]) ** 2).sum(1).mean())
        out[f"level{level + 1}_utilisation"] = float((used > 0).mean())
        out[f"level{level + 1}_residual_error"] = err
        out[f"level{level + 1}_explained"] = 1 - err / total if total else float("nan")
    for depth in range(1, codes.shape[1]):
        _, per_prefix = np.unique(codes[:, :depth], axis=0, return_counts=True)
        out[f"items_per_prefix{depth}_mean"] = float(per_prefix.mean())
        out[f"items_per_prefix{depth}_max"] = int(per_prefix.max())
    if categories is not None:
        cats = np.array([c if c else "" for c in categories], dtype=object)
        known = cats != ""
        if known.any():
            top = np.array([c.split(" > ")[0] for c in cats[known]])
            out["nmi_level1_top_category"] = float(normalized_mutual_info_score(top, codes[known, 0]))
            out["nmi_level1_leaf_category"] = float(normalized_mutual_info_score(cats[known].astype(str), codes[known, 0]))
            out["nmi_prefix2_leaf_category"] = float(normalized_mutual_info_score(
                cats[known].astype(str), codes[known, 0] * books.sizes[1] + codes[known, 1])) if codes.shape[1] > 1 else float("nan")
    return out


def utilisation_figure(codes: np.ndarray, sizes: list[int]):
    """Items per code, one panel per level (sorted, so the skew is visible)."""
    from genrec import plots

    fig, axes = plots.plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 3))
    axes = np.atleast_1d(axes)
    for level, (ax, k) in enumerate(zip(axes, sizes)):
        counts = np.sort(np.bincount(codes[:, level], minlength=k))[::-1]
        ax.bar(np.arange(k), counts, width=1.0, color="#4C72B0")
        ax.set_title(f"level {level + 1}: {int((counts > 0).sum())}/{k} codes used")
        ax.set_xlabel("code (sorted by items)")
        ax.set_ylabel("items")
    fig.tight_layout()
    return fig
