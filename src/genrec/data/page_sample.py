"""A bounded, seeded sample of pages drawn while a split streams past (genrec.data.io.iter_split_pages).

Each page gets a seeded hash of its page_id; the sample is the pages with the smallest hashes (a bottom-k sample),
up to a budget: k pages, or pages whose sizes (exposures, say) add up to the budget. It is a uniform random sample
without replacement, the same whatever the number, order or size of the part files, and memory holds about twice
the budget and one batch, not the split. evaluate draws its requests this way, train-reward its exposures and align
its prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

_HASH, _SIZE = "_sample_hash", "_sample_size"


def as_batches(pages: pd.DataFrame | Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
    """A DataFrame as one batch; batches of pages (genrec.data.io.iter_split_pages) as they come."""
    return [pages] if isinstance(pages, pd.DataFrame) else pages


def page_hash(page_ids: Iterable, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each page id (BLAKE2b keyed by the seed): stable across processes and machines,
    unlike Python's hash()."""
    key = int(seed).to_bytes(8, "little", signed=True)
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(p).encode(), digest_size=8, key=key).digest(), "little")
                        for p in page_ids), dtype=np.uint64)


def smallest_hashes(held: pd.DataFrame, budget: int) -> pd.DataFrame:
    """The rows of `held` with the smallest hashes (page_id breaks ties) whose sizes, added up in that order, stay
    under `budget` before each row (so the row that reaches the budget is in); all rows when budget is 0."""
    if not budget or held[_SIZE].sum() <= budget:
        return held
    ordered = held.sort_values([_HASH, "page_id"], kind="stable")
    before = ordered[_SIZE].cumsum() - ordered[_SIZE]
    return ordered[before.to_numpy() < budget]


def sample_pages(batches: Iterable[pd.DataFrame], budget: int, seed: int,
                 size: Callable[[pd.DataFrame], np.ndarray] | None = None) -> pd.DataFrame:
    """The sample of the pages in `batches`: with the smallest seeded hashes of page_id, `budget` pages (or, with
    `size`, pages whose sizes add up to about `budget`); 0: every page. In time order (page_start, page_id), as the
    whole split read at once would give them."""
    frames, held = [], 0
    for pages in batches:
        if len(pages) == 0:
            continue
        sizes = np.ones(len(pages), dtype=np.int64) if size is None else np.asarray(size(pages), dtype=np.int64)
        frames.append(pages.assign(**{_HASH: page_hash(pages["page_id"], seed), _SIZE: sizes}))
        held += int(sizes.sum())
        if budget and held > 2 * budget:  # cut back now and then: memory stays near twice the budget
            frames = [smallest_hashes(pd.concat(frames, ignore_index=True), budget)]
            held = int(frames[0][_SIZE].sum())
    if not frames:
        return pd.DataFrame(columns=["page_id", "user_id", "page_start", "history_items"])
    kept = smallest_hashes(pd.concat(frames, ignore_index=True), budget)
    return kept.sort_values(["page_start", "page_id"], kind="stable").drop(columns=[_HASH, _SIZE]).reset_index(drop=True)
