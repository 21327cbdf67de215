"""Reward-model examples from pages: every item a page showed, with label 1 if the user ordered, carted or
clicked it and 0 if it was only exposed. The page's history (what happened before the page began) is the
user's long history; pages without history are counted and skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from genrec.data.page_sample import as_batches, sample_pages
from genrec.model.samples import GROUP_COLUMNS
from genrec.model.vocab import SidMap
from genrec.reward.sim_model import history_rows

POSITIVE_TYPES = ("order", "cart", "click")


@dataclass
class Exposures:
    history: torch.Tensor  # (pages, H) 1-based item rows, left-padded
    page: np.ndarray  # (E,) index into history
    item: np.ndarray  # (E,) item ids
    row: np.ndarray  # (E,) 1-based item rows
    label: np.ndarray  # (E,) 1.0 engaged, 0.0 exposed only
    user: np.ndarray  # (pages,) user ids
    page_start: np.ndarray  # (pages,) when each page began (for the simulator's truth)
    skipped_no_history: int

    def __len__(self) -> int:
        return len(self.label)


def page_exposures(pages: pd.DataFrame) -> np.ndarray:
    """How many exposures (logged items, every group) each page holds."""
    return sum(pages[GROUP_COLUMNS[t]].map(len) for t in GROUP_COLUMNS).to_numpy()


def build_exposures(pages: pd.DataFrame | Iterable[pd.DataFrame], sid_map: SidMap, max_history: int, max_examples: int,
                    seed: int) -> Exposures:
    """Labelled exposures of `pages` (a DataFrame, or batches of pages streamed past: genrec.data.io.
    iter_split_pages); at most about `max_examples` (0: all), from a seeded sample of whole pages
    (genrec.data.page_sample): memory holds the sample, not the pages."""
    source, skipped = as_batches(pages), 0

    def with_history():
        nonlocal skipped
        for batch in source:
            has_history = batch["history_items"].map(len) > 0
            skipped += int((~has_history).sum())
            yield batch[has_history]

    pages = sample_pages(with_history(), max_examples, seed, size=page_exposures)
    sizes = page_exposures(pages) if len(pages) else np.zeros(0, dtype=np.int64)
    items, labels = [], []
    for page in pages.itertuples(index=False):
        page = page._asdict()
        for t, col in GROUP_COLUMNS.items():
            items.extend(int(i) for i in page[col])
            labels.extend([1.0 if t in POSITIVE_TYPES else 0.0] * len(page[col]))
    item = np.asarray(items, dtype=np.int64)
    hist = history_rows([list(h) for h in pages["history_items"]], sid_map, max_history, "a page history")
    return Exposures(hist, np.repeat(np.arange(len(pages)), sizes), item,
                     sid_map.rows(item, "the pages' exposures") + 1, np.asarray(labels, np.float32),
                     pages["user_id"].to_numpy(np.int64), pages["page_start"].to_numpy(), skipped)


def exposure_counts(rows: np.ndarray, n_items: int) -> np.ndarray:
    """How often the pages showed each item: one count per item in SID-table order, from 1-based item rows (as in
    Exposures.row)."""
    counts = np.bincount(np.asarray(rows, dtype=np.int64), minlength=n_items + 1)[1:]
    if len(counts) > n_items:
        raise ValueError(f"item rows go up to {len(counts)}, beyond the {n_items} items")
    return counts


def exposure_reach(rows: np.ndarray, users: np.ndarray, n_items: int) -> np.ndarray:
    """How many distinct users the pages showed each item: one count per item in SID-table order, from 1-based item
    rows and each exposure's user id."""
    rows, users = np.asarray(rows, dtype=np.int64), np.asarray(users, dtype=np.int64)
    if rows.shape != users.shape:
        raise ValueError(f"one user per exposure: {len(users)} users for {len(rows)} item rows")
    pairs = np.unique(np.stack([rows, users], axis=1), axis=0)
    return exposure_counts(pairs[:, 0], n_items)


def exposure_popularity(rows: np.ndarray, n_items: int, users: np.ndarray | None = None) -> np.ndarray:
    """Each item's popularity from the training exposures: log(1 + the times it was shown), or with `users` (one user
    id per exposure) log(1 + the distinct users it was shown to), standardised over the catalog (mean 0, sd 1; all 0
    when every item scored the same). Counts, not clicks: an item's click rate from the same exposures would hand the
    model its own labels."""
    counts = exposure_counts(rows, n_items) if users is None else exposure_reach(rows, users, n_items)
    log_counts = np.log1p(counts.astype(np.float64))
    sd = log_counts.std()
    return (log_counts - log_counts.mean()) / sd if sd > 0 else np.zeros(n_items)


def exposure_log_share(rows: np.ndarray, n_items: int) -> np.ndarray:
    """log of each item's share of the training exposures, add-one smoothed so that an item never shown stays
    finite: the logging policy's exposure prior that the catalog softmax's logQ correction adds."""
    counts = exposure_counts(rows, n_items).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())
