"""train-sft's training pages as a stream (issue 43 item 3): validate-pages' row groups, sharded by rank and
data-loader worker (genrec.data.page_stream), turned into this process's micro-batches of encoded samples for
run_loop (a RankBatches). Memory holds, per worker, one row group, the shuffle buffer and a window of micro-batches,
whatever the number of pages; a resumed run reads from the micro-batch it stopped at and gets what the killed run
would have read.

Micro-batch j of a rank's epoch comes from its stream j mod W (W data-loader workers, each playing one stream);
torch's DataLoader takes batches from its workers in turn from worker 0, and page_stream.worker_role tells each
worker which stream it plays when the epoch starts at micro-batch j0 > 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from genrec.data.io import read_row_group, split_row_groups
from genrec.data.page_sample import page_hash
from genrec.data.page_stream import (RowGroup, StreamPlan, assign_shards, count_shard, plan_stream, shard_batches,
                                     worker_role)
from genrec.errors import ConfigError, InputDataError
from genrec.model.samples import GROUP_COLUMNS, build_samples, encode_sample, epoch_batch
from genrec.train.deepspeed_loop import RankBatches


@dataclass(frozen=True)
class StreamSpec:
    """How a stream turns pages into micro-batches: the same in every process and worker."""

    micro_batch: int
    workers: int  # data-loader workers per process (0: read in the training process)
    buffer: int  # samples in the shuffle buffer
    window: int  # micro-batches sorted by length together
    seed: int


class _ShardStream(torch.utils.data.IterableDataset):
    """The micro-batches a process reads in one epoch from micro-batch `skip` on, built in data-loader workers."""

    def __init__(self, plan: StreamPlan, spec: StreamSpec, rank: int, epoch: int, skip: int,
                 read_group: Callable[[RowGroup], pd.DataFrame], to_samples: Callable[[pd.DataFrame], list],
                 length: Callable[[object], int], collate: Callable[[list, int], dict]):
        super().__init__()
        self.plan, self.spec, self.rank, self.epoch, self.skip = plan, spec, rank, epoch, skip
        self.read_group, self.to_samples, self.length, self.collate = read_group, to_samples, length, collate

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        streams = max(self.spec.workers, 1)
        stream, skip = worker_role(info.id if info else 0, streams, self.skip)
        s = self.spec
        for batch in shard_batches(self.plan, self.rank * streams + stream, self.epoch, s.seed, self.read_group,
                                   self.to_samples, self.length, s.micro_batch, s.buffer, s.window, skip=skip):
            yield self.collate(batch, self.epoch)


def stream_batches(plan: StreamPlan, spec: StreamSpec, rank: int, read_group: Callable[[RowGroup], pd.DataFrame],
                   to_samples: Callable[[pd.DataFrame], list], length: Callable[[object], int],
                   collate: Callable[[list, int], dict]) -> RankBatches:
    """This process's micro-batches (RankBatches) from a plan over processes x workers shards: `to_samples` turns
    pages into samples, `length` is a sample's length, `collate(samples, epoch)` builds a micro-batch's tensors."""
    streams = max(spec.workers, 1)
    if plan.shards % streams:
        raise ValueError(f"a plan over {plan.shards} shards cannot serve {streams} streams per process")

    def read(epoch: int, skip: int) -> Iterator[dict]:
        dataset = _ShardStream(plan, spec, rank, epoch, skip, read_group, to_samples, length, collate)
        if spec.workers == 0:
            return iter(dataset)
        # its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise, and a resumed
        # run, which opens the epoch's loader at another step, would then replay other dropout masks
        generator = torch.Generator().manual_seed(spec.seed)
        return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=spec.workers, generator=generator))

    return RankBatches(plan.batches_per_epoch * streams, read)


def count_pages(pages_dir, split: str, shards: int, own: range, count: Callable[[pd.DataFrame], np.ndarray],
                count_columns: list[str], device: torch.device,
                progress: bool = True) -> tuple[str, list[RowGroup], np.ndarray]:
    """The counting pass: (the pages' URI, the split's row groups, a table of `count` totals per shard).
    `count(pages)` returns a vector whose first entry is the pages' samples (the rest: totals for the report). This
    process counts its `own` shards, reading only `count_columns`; one all-reduce gives every process every row."""
    uri, groups = split_row_groups(pages_dir, split)
    if not groups:
        raise InputDataError(f"{uri}: the {split} split has no row group (no part file)")
    by_rows, assignment = assign_shards(groups, shards)
    width = len(count(pd.DataFrame({c: [] for c in count_columns})))
    table = np.zeros((shards, width))
    rows = None if by_rows else sum(g.rows for shard in own for g in assignment[shard])  # by rows: a share of each
    bar = tqdm(total=rows, desc=f"counting the {split} samples", unit="page", unit_scale=True, disable=not progress)
    for shard in own:
        totals = np.zeros(width)

        def tally(pages: pd.DataFrame) -> int:
            nonlocal totals
            row = count(pages)
            totals = totals + row
            bar.update(len(pages))
            return int(row[0])

        count_shard(assignment[shard], shard, shards, by_rows, lambda g: read_row_group(uri, g, split, count_columns),
                    tally)
        table[shard] = totals
    bar.close()
    reduced = torch.tensor(table, dtype=torch.float64, device=device)  # nccl reduces GPU tensors only
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(reduced)
    return uri, groups, reduced.cpu().numpy()


def sft_stream(cfg, pages_dir, sid_map, vocab, spec: StreamSpec, rank: int, world: int,
               device: torch.device) -> tuple[RankBatches, dict]:
    """train-sft's micro-batches for this process from the training split, and the counts of report.json (the
    counting pass, summed over every process): pages, samples, pages skipped, targets truncated, samples per shard."""
    s = cfg.sft

    def samples_of(pages: pd.DataFrame):
        return build_samples(pages, s.mode, s.target_types, cfg.model.max_history, s.max_target_items)

    def count(pages: pd.DataFrame) -> np.ndarray:
        samples, c = samples_of(pages)
        return np.array([c.samples, c.pages, c.skipped_empty_history, c.skipped_empty_target, c.truncated_targets,
                         sum(len(x.history) for x in samples), sum(len(x.target) for x in samples)], dtype=float)

    columns = ["page_id", "user_id", "history_items", *(GROUP_COLUMNS[t] for t in s.target_types)]
    streams = max(spec.workers, 1)
    uri, groups, table = count_pages(pages_dir, "train", world * streams, range(rank * streams, (rank + 1) * streams),
                                     count, columns, device, progress=rank == 0)
    totals = table.sum(axis=0)
    n_samples, n_pages, no_history, no_target, truncated, history_items, target_items = totals
    if not n_samples:
        raise InputDataError(f"{uri}: no training sample (pages: {int(n_pages)}, without history: {int(no_history)}, "
                             f"without a target item of {s.target_types}: {int(no_target)})")
    try:
        plan = plan_stream(groups, world * streams, lambda shard, _groups, _by_rows: int(table[shard, 0]),
                           spec.micro_batch)
    except ValueError as exc:
        raise ConfigError(f"{exc}: lower sft.micro_batch_size or sft.loader_workers") from None
    shuffle_seed = spec.seed if s.target_order == "shuffled" else None

    def to_samples(pages: pd.DataFrame) -> list:
        samples, _ = samples_of(pages)
        keys = page_hash([x.page_id for x in samples], spec.seed)
        return [(int(k), encode_sample(x, sid_map, vocab, cfg.model.token_merger)) for k, x in zip(keys, samples)]

    def make(batch: list, epoch: int) -> dict:
        return epoch_batch([e for _, e in batch], [k for k, _ in batch], epoch, shuffle_seed, vocab)

    batches = stream_batches(plan, spec, rank, lambda g: read_row_group(uri, g, "train", columns), to_samples,
                             lambda sample: len(sample[1][0]), make)
    report = {"n_pages": int(n_pages), "n_samples": int(n_samples), "skipped_empty_history": int(no_history),
              "skipped_empty_target": int(no_target), "truncated_targets": int(truncated),
              "mean_history_items": history_items / n_samples, "mean_target_items": target_items / n_samples,
              "stream_shards": plan.shards, "stream_row_groups": len(groups), "stream_smallest_shard": min(plan.samples),
              "samples_per_epoch": plan.batches_per_epoch * plan.shards * spec.micro_batch}
    return batches, report
