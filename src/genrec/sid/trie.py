"""The prefix index over valid semantic IDs: which next codes are allowed after a prefix.

Constrained beam search asks `allowed(prefix)` at every step; the hallucination rate asks `contains(sid)`.
Stored as plain arrays (npz): for each level, the sorted unique prefixes and, per prefix, a slice of the
sorted next codes (CSR layout), so lookups are binary searches and nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class SidTrie:
    def __init__(self, codes: np.ndarray, sizes: list[int]):
        codes = np.asarray(codes, dtype=np.int64)
        self.sizes = [int(s) for s in sizes]
        self.levels = codes.shape[1]
        self._keys, self._offsets, self._next = [], [], []
        for level in range(self.levels):
            prefix_keys = self._key(codes[:, :level])
            pairs = np.unique(np.stack([prefix_keys, codes[:, level]], axis=1), axis=0)
            keys, starts = np.unique(pairs[:, 0], return_index=True)
            self._keys.append(keys)
            self._offsets.append(np.append(starts, len(pairs)))
            self._next.append(pairs[:, 1])
        self._full = np.unique(self._key(codes))

    def _key(self, prefix: np.ndarray) -> np.ndarray:
        key = np.zeros(len(prefix), dtype=np.int64)
        for level in range(prefix.shape[1]):
            key = key * self.sizes[level] + prefix[:, level] + 1  # +1: the empty prefix differs from code 0
        return key

    def allowed(self, prefix) -> np.ndarray:
        """Sorted codes that may follow `prefix` (a tuple of codes, possibly empty)."""
        level = len(prefix)
        if level >= self.levels:
            return np.zeros(0, dtype=np.int64)
        key = self._key(np.asarray([prefix], dtype=np.int64).reshape(1, level))[0]
        pos = np.searchsorted(self._keys[level], key)
        if pos == len(self._keys[level]) or self._keys[level][pos] != key:
            return np.zeros(0, dtype=np.int64)
        return self._next[level][self._offsets[level][pos]:self._offsets[level][pos + 1]]

    def prefix_keys(self, prefixes: np.ndarray) -> np.ndarray:
        """(M, level) code prefixes -> their int64 keys, the ones `level_mask` is sorted by."""
        return self._key(np.asarray(prefixes, dtype=np.int64))

    def level_mask(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted prefix keys, bool (n_prefixes, sizes[level]) mask of the codes allowed after each prefix):
        `allowed` for every prefix of a level at once, for batched decoding."""
        keys, offsets, nxt = self._keys[level], self._offsets[level], self._next[level]
        mask = np.zeros((len(keys), self.sizes[level]), dtype=bool)
        mask[np.repeat(np.arange(len(keys)), np.diff(offsets)), nxt] = True
        return keys, mask

    def contains(self, sids: np.ndarray) -> np.ndarray:
        """For each row of codes, whether it is the SID of an item."""
        sids = np.atleast_2d(np.asarray(sids, dtype=np.int64))
        return np.isin(self._key(sids), self._full)

    def save(self, path: str | Path) -> None:
        arrays = {"sizes": np.asarray(self.sizes), "full": self._full}
        for level in range(self.levels):
            arrays.update({f"keys{level}": self._keys[level], f"offsets{level}": self._offsets[level], f"next{level}": self._next[level]})
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "SidTrie":
        with np.load(path, allow_pickle=False) as z:
            trie = cls.__new__(cls)
            trie.sizes = z["sizes"].tolist()
            trie.levels = len(trie.sizes)
            trie._full = z["full"]
            trie._keys = [z[f"keys{i}"] for i in range(trie.levels)]
            trie._offsets = [z[f"offsets{i}"] for i in range(trie.levels)]
            trie._next = [z[f"next{i}"] for i in range(trie.levels)]
        return trie
