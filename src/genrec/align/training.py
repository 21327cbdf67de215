"""What the align stage's loop needs from an alignment method (GRPO-SR or LDPO)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from genrec.data.page_sample import sample_pages
from genrec.model.samples import GROUP_COLUMNS


@dataclass
class AlignTraining:
    """A method's training set-up: `run_loop`'s callables and the start of the stage's report."""

    loss_fn: Callable  # (model, batch) -> (loss, {term: value})
    make_batch: Callable[[np.ndarray], dict]  # prompt indices -> tensors
    epoch_batches: Callable[[int], list[np.ndarray]]  # epoch -> micro-batches of prompt indices
    count_tokens: Callable[[dict], int]  # tokens a micro-batch processes with gradient
    report: dict
    quarantined: dict[str, pd.DataFrame] = field(default_factory=dict)  # input file -> its refused rows (+ reason)


def prompt_pages(batches: Iterable[pd.DataFrame], item_groups: Iterable[str], max_prompts: int,
                 seed: int) -> tuple[pd.DataFrame, int]:
    """(the training pages that can be prompts, pages read): pages with a history and an item of `item_groups`
    (GROUP_COLUMNS' names), at most `max_prompts` of them (align.max_prompts; 0: all), a seeded sample drawn while
    the pages stream past (genrec.data.page_sample), in time order: memory holds the sample, not the split."""
    columns, read = [GROUP_COLUMNS[g] for g in item_groups], 0

    def usable():
        nonlocal read
        for pages in batches:
            read += len(pages)
            has_item = np.zeros(len(pages), dtype=bool)
            for column in columns:
                has_item |= (pages[column].map(len) > 0).to_numpy()
            yield pages[(pages["history_items"].map(len) > 0).to_numpy() & has_item]

    return sample_pages(usable(), max_prompts, seed), read
