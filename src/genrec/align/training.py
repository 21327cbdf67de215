"""What the align stage's loop needs from an alignment method (GRPO-SR or LDPO)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd


@dataclass
class AlignTraining:
    """A method's training set-up: `run_loop`'s callables and the start of the stage's report."""

    loss_fn: Callable  # (model, batch) -> (loss, {term: value})
    make_batch: Callable[[np.ndarray], dict]  # prompt indices -> tensors
    epoch_batches: Callable[[int], list[np.ndarray]]  # epoch -> micro-batches of prompt indices
    count_tokens: Callable[[dict], int]  # tokens a micro-batch processes with gradient
    report: dict
    quarantined: dict[str, pd.DataFrame] = field(default_factory=dict)  # input file -> its refused rows (+ reason)


def prompt_subset(prompts: list, max_prompts: int, seed: int) -> list:
    """At most `max_prompts` of the prompts (align.max_prompts; 0: all), a seeded subset in their order."""
    if not max_prompts or len(prompts) <= max_prompts:
        return prompts
    keep = np.sort(np.random.default_rng(seed).choice(len(prompts), max_prompts, replace=False))
    return [prompts[i] for i in keep]
