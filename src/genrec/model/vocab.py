"""The model's vocabulary (special tokens + the SID codes of every level) and the item <-> SID map.

Token ids, from `offset` (0 for a model built from a config; the base vocabulary size for a pretrained
checkpoint, whose own tokens keep their ids):

    offset + 0..3              <pad> <bos> <sep> <eos>
    offset + 4 + sum(K[:l]) + c    code c of level l (K[l] codes per level)

A sequence: <bos> history items <sep> | target item codes, <sep> between items, <eos> at the end.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from genrec.errors import InputDataError
from genrec.sid.trie import SidTrie

SPECIALS = ("<pad>", "<bos>", "<sep>", "<eos>")


@dataclass(frozen=True)
class SidVocab:
    sizes: tuple[int, ...]  # codes per level
    offset: int = 0  # id of <pad>; everything of ours follows it

    @property
    def levels(self) -> int:
        return len(self.sizes)

    @property
    def pad(self) -> int:
        return self.offset

    @property
    def bos(self) -> int:
        return self.offset + 1

    @property
    def sep(self) -> int:
        return self.offset + 2

    @property
    def eos(self) -> int:
        return self.offset + 3

    @property
    def n_tokens(self) -> int:
        return len(SPECIALS) + sum(self.sizes)

    @property
    def vocab_size(self) -> int:
        return self.offset + self.n_tokens

    def level_start(self, level: int) -> int:
        return self.offset + len(SPECIALS) + sum(self.sizes[:level])

    def code_tokens(self, codes: np.ndarray) -> np.ndarray:
        """(..., levels) codes -> (..., levels) token ids."""
        codes = np.asarray(codes, dtype=np.int64)
        return codes + np.array([self.level_start(i) for i in range(self.levels)], dtype=np.int64)

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "offset": self.offset, "specials": list(SPECIALS)}

    @classmethod
    def from_dict(cls, d: dict) -> "SidVocab":
        return cls(tuple(int(s) for s in d["sizes"]), int(d["offset"]))


class SidMap:
    """item id <-> SID codes, from assign-sids' sid_table.parquet."""

    def __init__(self, item_ids: np.ndarray, codes: np.ndarray, sizes: tuple[int, ...], source: str = "sid table"):
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.sizes = tuple(int(s) for s in sizes)
        self.source = source
        self._row = {int(i): r for r, i in enumerate(self.item_ids)}
        self._item_of_key = dict(zip(self._keys(self.codes).tolist(), self.item_ids.tolist()))

    @classmethod
    def load(cls, sids_dir: str | Path) -> "SidMap":
        """Reads sid_table.parquet (item_id, s1..sL) and the codebook sizes from codebooks.npz."""
        sids_dir = Path(sids_dir)
        table_path, books_path = sids_dir / "sid_table.parquet", sids_dir / "codebooks.npz"
        for p in (table_path, books_path):
            if not p.is_file():
                raise InputDataError(f"{p} not found: run assign-sids first")
        table = pq.read_table(table_path).to_pandas()
        cols = sorted((c for c in table.columns if c.startswith("s") and c[1:].isdigit()), key=lambda c: int(c[1:]))
        if "item_id" not in table.columns or not cols:
            raise InputDataError(f"{table_path}: expected columns item_id, s1..sL; got {list(table.columns)}")
        with np.load(books_path, allow_pickle=False) as z:
            sizes = tuple(int(z[f"level{i + 1}"].shape[0]) for i in range(len(cols)))
        return cls(table["item_id"].to_numpy(), table[cols].to_numpy(), sizes, str(table_path))

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    def _keys(self, codes: np.ndarray) -> np.ndarray:
        key = np.zeros(len(codes), dtype=np.int64)
        for level, size in enumerate(self.sizes):
            key = key * size + codes[:, level]
        return key

    def trie(self) -> SidTrie:
        """The prefix index over these SIDs (what constrained decoding follows)."""
        return SidTrie(self.codes, list(self.sizes))

    def fingerprint(self) -> str:
        """Hash of the (item, SID) assignment: a model trained on other SIDs must not be used with these."""
        h = hashlib.sha256()
        h.update(np.asarray(self.sizes, dtype=np.int64).tobytes())
        order = np.argsort(self.item_ids)
        h.update(self.item_ids[order].tobytes())
        h.update(self.codes[order].tobytes())
        return h.hexdigest()[:16]

    def require_fingerprint(self, fingerprint: str, what: str) -> None:
        """Refuse a model trained on another SID table (`what` names the model and where it came from)."""
        if fingerprint != self.fingerprint():
            raise InputDataError(f"{what} was trained on other semantic IDs than {self.source} (fingerprint "
                                 f"{fingerprint} vs {self.fingerprint()}); use the SID table it was trained on, or retrain")

    def rows(self, items, where: str = "") -> np.ndarray:
        """Row numbers of `items`; unknown items are an error naming them (the SID map must cover the catalog)."""
        out = [self._row.get(int(i), -1) for i in items]
        if -1 in out:
            unknown = sorted({int(i) for i, r in zip(items, out) if r == -1})
            raise InputDataError(f"{len(unknown)} item ids {('in ' + where + ' ') if where else ''}have no semantic ID in "
                                 f"{self.source} (first: {unknown[:10]}); was assign-sids run on this catalog?")
        return np.asarray(out, dtype=np.int64)

    def item_codes(self, items, where: str = "") -> np.ndarray:
        """(n, levels) codes of `items`."""
        return self.codes[self.rows(items, where)]

    def items_of(self, codes: np.ndarray) -> np.ndarray:
        """Item id of each row of codes, -1 where the codes are no item (a hallucination)."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1, self.levels)
        return np.array([self._item_of_key.get(k, -1) for k in self._keys(codes).tolist()], dtype=np.int64)
