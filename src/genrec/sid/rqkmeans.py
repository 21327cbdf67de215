"""RQ-KMeans: k-means on the embeddings, then on the residuals, level by level (faiss, k-means++ init).

Collisions (two items with the same codes) are resolved without lengthening IDs: the item nearest to the
contested code keeps it; each other item moves to the nearest last-level code that is still free under its
prefix, or, when that prefix is full (identical embeddings are common: product variants with one text),
under the nearest other code of the level before. The first code, the coarsest cluster, never changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from genrec.errors import InputDataError


@dataclass
class RQCodebooks:
    centroids: list[np.ndarray]  # one (K_l, d) array per level

    @property
    def sizes(self) -> list[int]:
        return [c.shape[0] for c in self.centroids]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return sum(c[codes[:, level]] for level, c in enumerate(self.centroids))


def auto_codebook_size(n_items: int, levels: int) -> int:
    """K = clip(4 * n^(1/levels), 16, 256), a multiple of 8: the ID space holds ~64x the catalog, because
    residual codes are used unevenly and near-duplicate items crowd the same prefixes."""
    k = int(round(4 * n_items ** (1 / levels) / 8) * 8)
    return int(min(256, max(16, k)))


def check_embeddings(x: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Reject what cannot be quantised, with a message naming the problem and the items."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputDataError(f"embeddings must be a non-empty (n_items, dim) matrix, got shape {x.shape}")
    if len(item_ids) != x.shape[0]:
        raise InputDataError(f"{x.shape[0]} embeddings but {len(item_ids)} item ids: the files do not belong together")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise InputDataError(f"{int(bad.sum())} embeddings hold NaN or infinite values; first item ids: {item_ids[bad][:10].tolist()}")
    if len(np.unique(item_ids)) != len(item_ids):
        raise InputDataError("item ids are not unique")
    return np.ascontiguousarray(x, dtype=np.float32)


def fit_rq_kmeans(x: np.ndarray, sizes: list[int], niter: int, seed: int, init_sample: int) -> RQCodebooks:
    """Train one codebook per level on the residuals of the previous levels."""
    residual = x.copy()
    centroids = []
    for level, k in enumerate(sizes):
        k_eff = min(k, len(np.unique(residual, axis=0)))  # fewer distinct points than codes: fewer centroids
        km = faiss.Kmeans(x.shape[1], k_eff, niter=niter, seed=seed + level, verbose=False,
                          max_points_per_centroid=max(1, init_sample // max(k_eff, 1)),
                          init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
        km.train(residual)
        cent = np.zeros((k, x.shape[1]), dtype=np.float32)
        cent[:k_eff] = km.centroids
        centroids.append(cent)
        _, assign = km.index.search(residual, 1)
        residual -= km.centroids[assign[:, 0]]
    return RQCodebooks(centroids)


def encode(x: np.ndarray, books: RQCodebooks) -> tuple[np.ndarray, list[np.ndarray]]:
    """Greedy residual encoding; returns (codes (n, L), the input residual of every level)."""
    residual = x.copy()
    codes = np.zeros((len(x), len(books.centroids)), dtype=np.int64)
    inputs = []
    for level, cent in enumerate(books.centroids):
        index = faiss.IndexFlatL2(cent.shape[1])
        index.add(cent)
        inputs.append(residual.copy())
        _, assign = index.search(residual, 1)
        codes[:, level] = assign[:, 0]
        residual -= cent[assign[:, 0]]
    return codes, inputs


def _sqdist(v: np.ndarray, cent: np.ndarray) -> np.ndarray:
    return ((cent - v[None, :]) ** 2).sum(1)


def resolve_collisions(codes: np.ndarray, inputs: list[np.ndarray], books: RQCodebooks) -> tuple[np.ndarray, int]:
    """Make every code tuple unique; returns (codes, items moved).

    Within a shared full code, the item nearest to the last-level centroid keeps it. Each other item takes
    the nearest free last-level code under its prefix; when that prefix is full, it tries the next-nearest
    codes of the level before (the first level, the coarsest, never changes). A catalog that still does not
    fit fails with a message that says which setting to raise.
    """
    codes = codes.copy()
    levels = codes.shape[1]
    last_c = books.centroids[-1]
    used: dict[tuple, set[int]] = {}
    for row in codes:
        used.setdefault(tuple(row[:-1]), set()).add(int(row[-1]))
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    movers = []
    for group in np.flatnonzero(counts > 1):
        members = np.flatnonzero(inverse == group)
        code = codes[members[0], -1]
        dist = ((inputs[-1][members] - last_c[code]) ** 2).sum(1)
        movers.extend(members[np.argsort(dist, kind="stable")[1:]].tolist())  # the nearest keeps the code
    for i in movers:
        placed = False
        if levels == 1:
            candidates = [()]
        else:
            # Prefixes to try: the item's own, then other codes of the second-to-last level, nearest first.
            base = tuple(codes[i, :-2])
            order = np.argsort(_sqdist(inputs[-2][i], books.centroids[-2]), kind="stable")
            own = int(codes[i, -2])
            candidates = [base + (own,)] + [base + (int(c),) for c in order if c != own]
        for prefix in candidates:
            taken = used.setdefault(prefix, set())
            if len(taken) >= last_c.shape[0]:
                continue
            r = inputs[-1][i] if levels == 1 or prefix[-1] == codes[i, -2] else \
                inputs[-2][i] - books.centroids[-2][prefix[-1]]
            for c in np.argsort(_sqdist(r, last_c), kind="stable"):
                if int(c) not in taken:
                    codes[i, :-1] = prefix
                    codes[i, -1] = c
                    taken.add(int(c))
                    placed = True
                    break
            if placed:
                break
        if not placed:
            raise InputDataError(f"item row {i} cannot get a unique semantic ID: every code under its first-level code "
                                 f"{codes[i, 0]} is taken; increase sid.codebook_size or sid.levels")
    return codes, len(movers)


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose code tuple is also another item's."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean())
