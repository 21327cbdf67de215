"""Training pages as a stream of row groups, sharded by rank and data-loader worker, shuffled within a bounded
buffer, replayable from any micro-batch (train-sft's input; issue 43 item 3).

The training split's part files are cut into their parquet row groups (read from the footers, no data). Each row
group belongs to one shard for the whole run: shard = row group number modulo the number of shards (processes x
data-loader workers). With fewer row groups than shards every shard reads every row group and keeps the rows whose
number modulo the shards is its own. A counting pass (`count` over each row group) gives every shard's sample count;
every shard yields the same number of micro-batches per epoch, the smallest shard's, so the ranks take the same
number of optimizer steps and micro-batch j of a rank's epoch is its worker (j mod W)'s (j div W)-th.

Within a shard and an epoch: the row groups in an order drawn from (seed, epoch, shard), the samples through a
shuffle buffer of `buffer` samples drawn from the same seed, then cut into micro-batches of similar length (windows
of `window` micro-batches sorted by length, the micro-batches of a window in a seeded order). Everything depends
only on (seed, epoch, shard), so a resumed run replays a shard's stream up to the micro-batch it stopped at: no
buffer state goes into the checkpoint. Memory holds one row group, the buffer and a window, whatever the pages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class RowGroup:
    """One parquet row group of a part file: the unit of sharding."""

    path: str
    index: int
    rows: int


@dataclass(frozen=True)
class StreamPlan:
    """Which row groups each shard reads, and how many micro-batches every shard yields per epoch."""

    shards: int
    by_rows: bool  # fewer row groups than shards: each shard reads them all and keeps every shards-th row
    assignment: tuple[tuple[RowGroup, ...], ...]
    samples: tuple[int, ...]  # samples per shard (the counting pass)
    batches_per_epoch: int  # micro-batches every shard yields per epoch: the smallest shard's


def assign_shards(groups: list[RowGroup], shards: int) -> tuple[bool, tuple[tuple[RowGroup, ...], ...]]:
    """(by_rows, each shard's row groups): row group i of the sorted list goes to shard i mod shards; with fewer row
    groups than shards every shard gets them all and keeps its rows (shard_rows)."""
    groups = sorted(groups, key=lambda g: (g.path, g.index))
    by_rows = len(groups) < shards
    return by_rows, tuple(tuple(groups) if by_rows else tuple(groups[s::shards]) for s in range(shards))


def count_shard(groups: tuple[RowGroup, ...], shard: int, shards: int, by_rows: bool,
                read_group: Callable[[RowGroup], pd.DataFrame], count: Callable[[pd.DataFrame], int]) -> int:
    """The samples of one shard (the counting pass): `count(pages)` over its row groups, or over its rows of them
    when the shards split rows. Memory holds one row group."""
    total, first = 0, 0
    for group in groups:
        pages = read_group(group)
        total += count(shard_rows(pages, first, shard, shards) if by_rows else pages)
        first += group.rows
    return total


def plan_stream(groups: list[RowGroup], shards: int, shard_samples: Callable[[int, tuple[RowGroup, ...], bool], int],
                micro_batch: int) -> StreamPlan:
    """Assign the row groups to `shards` shards and count each shard's samples with `shard_samples(shard, its row
    groups, by_rows)`. Raises ValueError when a shard cannot fill one micro-batch."""
    by_rows, assignment = assign_shards(groups, shards)
    samples = tuple(shard_samples(s, assignment[s], by_rows) for s in range(shards))
    batches = min(samples) // micro_batch
    if batches == 0:
        raise ValueError(f"a shard of the training pages holds {min(samples)} samples, fewer than one micro-batch of "
                         f"{micro_batch} ({shards} shards: processes x data-loader workers; samples per shard: "
                         f"{list(samples)})")
    return StreamPlan(shards, by_rows, assignment, samples, batches)


def shard_rows(frame: pd.DataFrame, first_row: int, shard: int, shards: int) -> pd.DataFrame:
    """The rows of a row group (whose first row is row `first_row` of the split) that belong to `shard` when the
    shards split rows rather than row groups."""
    numbers = np.arange(first_row, first_row + len(frame))
    return frame[numbers % shards == shard]


def shuffled(items: Iterator, buffer: int, rng: np.random.Generator) -> Iterator:
    """`items` in a random order drawn from `rng` through a buffer of `buffer` items (a reservoir swap: each new
    item replaces a random one, which is yielded); the rest of the buffer at the end, permuted."""
    held: list = []
    for item in items:
        if len(held) < buffer:
            held.append(item)
            continue
        j = int(rng.integers(buffer))
        yield held[j]
        held[j] = item
    for j in rng.permutation(len(held)):
        yield held[j]


def length_grouped(samples: Iterator, micro_batch: int, window: int, length: Callable[[object], int],
                   rng: np.random.Generator) -> Iterator[list]:
    """Micro-batches of `micro_batch` samples: windows of `window` micro-batches sorted by length (longest first, so
    little padding), the micro-batches of each window in a random order from `rng`. A last partial micro-batch is
    dropped."""
    size = micro_batch * window
    pending: list = []

    def cut(chunk: list) -> Iterator[list]:
        chunk = sorted(chunk, key=length, reverse=True)
        batches = [chunk[i:i + micro_batch] for i in range(0, len(chunk) - micro_batch + 1, micro_batch)]
        for j in rng.permutation(len(batches)):
            yield batches[j]

    for sample in samples:
        pending.append(sample)
        if len(pending) == size:
            yield from cut(pending)
            pending = []
    yield from cut(pending)


def shard_batches(plan: StreamPlan, shard: int, epoch: int, seed: int,
                  read_group: Callable[[RowGroup], pd.DataFrame], to_samples: Callable[[pd.DataFrame], list],
                  length: Callable[[object], int], micro_batch: int, buffer: int, window: int,
                  skip: int = 0) -> Iterator[list]:
    """The micro-batches of `shard` in `epoch`, after the first `skip` of them: exactly plan.batches_per_epoch in
    all. `read_group` reads a row group as pages; `to_samples` turns pages into samples; `length` is a sample's
    length. Depends only on (seed, epoch, shard): a replay gives the same micro-batches."""
    groups = plan.assignment[shard]
    first_rows = np.concatenate([[0], np.cumsum([g.rows for g in groups])[:-1]]).astype(int)
    order = np.random.default_rng([seed, epoch, shard]).permutation(len(groups))

    def samples() -> Iterator:
        for i in order:
            pages = read_group(groups[i])
            if plan.by_rows:
                pages = shard_rows(pages, int(first_rows[i]), shard, plan.shards)
            yield from to_samples(pages)

    rng = np.random.default_rng([seed, epoch, shard, 1])
    batches = length_grouped(shuffled(samples(), buffer, rng), micro_batch, window, length, rng)
    for n, batch in enumerate(batches):
        if n >= plan.batches_per_epoch:
            return
        if n >= skip:
            yield batch


def worker_role(worker_id: int, workers: int, start: int) -> tuple[int, int]:
    """(which of the rank's W streams this data-loader worker plays, micro-batches it skips) when the rank resumes
    at its micro-batch `start` of the epoch. Micro-batch j of the epoch comes from stream j mod W; torch's DataLoader
    takes its first batch from worker 0, so on a resume at start = qW + r worker w plays stream (w + r) mod W, which
    has already given q batches, or q + 1 when it comes before r."""
    q, r = divmod(start, workers)
    stream = (worker_id + r) % workers
    return stream, q + (1 if stream < r else 0)
