"""The requests evaluate scores: the pages of a split that have a history and a true item, as a bounded sample
drawn while the split streams past (genrec.data.page_sample): the validation and test days are never held whole."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.data.page_sample import sample_pages
from genrec.model.samples import page_items


def scorable(pages: pd.DataFrame, truth_types: list[str]) -> tuple[np.ndarray, dict]:
    """(mask of the pages with a history and a true item of `truth_types`, counts of the others)."""
    keep = np.zeros(len(pages), dtype=bool)
    counts = {"no_history": 0, "no_truth": 0}
    for n, page in enumerate(pages.itertuples(index=False)):
        page = page._asdict()
        if page["history_items"] is None or len(page["history_items"]) == 0:
            counts["no_history"] += 1
        elif not page_items(page, truth_types):
            counts["no_truth"] += 1
        else:
            keep[n] = True
    return keep, counts


def select_requests(batches: Iterable[pd.DataFrame], truth_types: list[str], max_history: int, max_requests: int,
                    seed: int):
    """(histories, truths, counts, scored pages) of the scorable pages in `batches`, at most `max_requests` of them
    (0: all) drawn by the seeded bottom-k hash sample, in time order. counts: pages read (`test_pages`), skipped
    without history or truth, `scorable`, and `requests` scored."""
    counts = {"test_pages": 0, "no_history": 0, "no_truth": 0}

    def scorable_pages():
        for pages in batches:
            keep, skipped = scorable(pages, truth_types)
            counts["test_pages"] += len(pages)
            for name, n in skipped.items():
                counts[name] += n
            yield pages[keep]

    scored = sample_pages(scorable_pages(), max_requests, seed)
    counts["scorable"] = counts["test_pages"] - counts["no_history"] - counts["no_truth"]
    histories = [[int(i) for i in h][-max_history:] for h in scored["history_items"]]
    truths = [set(page_items(page._asdict(), truth_types)) for page in scored.itertuples(index=False)]
    counts["requests"] = len(histories)
    return histories, truths, counts, scored


def sample_requests(pages_dir: str | Path, split: str, truth_types: list[str], max_history: int, max_requests: int,
                    seed: int, batch_rows: int = 65_536):
    """select_requests over one split of validate-pages' folder, streamed a batch of pages at a time."""
    from genrec.data.io import iter_split_pages

    return select_requests(iter_split_pages(pages_dir, split, batch_rows), truth_types, max_history, max_requests,
                           seed)
