"""The training-page stream: row groups sharded by rank and worker, a bounded shuffle buffer, micro-batches of
similar length, and a replay from any micro-batch that gives what the first run gave."""

import itertools

import numpy as np
import pandas as pd
import pytest

from genrec.data.page_stream import (RowGroup, count_shard, length_grouped, plan_stream, shard_batches, shuffled,
                                     worker_role)

# A split of 3 files x 4 row groups of 25 pages; page p has 1 + p % 7 history items; every page is one sample.
GROUPS = [RowGroup(f"part-{f}.parquet", i, 25) for f in range(3) for i in range(4)]
PAGES = {g: pd.DataFrame({"page": np.arange(25) + 25 * n, "length": 1 + (np.arange(25) + 25 * n) % 7})
         for n, g in enumerate(sorted(GROUPS, key=lambda g: (g.path, g.index)))}


def _count(plan_shards: int):
    """Every page is one sample: a shard's count is its pages (the counting pass reads them)."""
    return lambda shard, groups, by_rows: count_shard(groups, shard, plan_shards, by_rows, PAGES.__getitem__, len)


def _batches(plan, shard, epoch, skip=0, buffer=16, window=3):
    return list(shard_batches(plan, shard, epoch, seed=7, read_group=PAGES.__getitem__,
                              to_samples=lambda df: list(zip(df["page"], df["length"])), length=lambda s: s[1],
                              micro_batch=4, buffer=buffer, window=window, skip=skip))


def test_row_groups_go_to_shards_and_every_shard_yields_as_many_micro_batches():
    plan = plan_stream(GROUPS, 4, _count(4), micro_batch=4)
    assert not plan.by_rows and [len(a) for a in plan.assignment] == [3, 3, 3, 3]
    assert plan.samples == (75, 75, 75, 75) and plan.batches_per_epoch == 18
    seen = []
    for shard in range(4):
        batches = _batches(plan, shard, epoch=0)
        assert len(batches) == 18 and all(len(b) == 4 for b in batches)
        pages = [p for b in batches for p, _ in b]
        assert {p // 25 for p in pages} <= {n for n, g in enumerate(sorted(GROUPS, key=lambda g: (g.path, g.index)))
                                            if g in plan.assignment[shard]}
        seen += pages
    assert len(seen) == len(set(seen)) == 4 * 18 * 4  # no page twice across shards


def test_fewer_row_groups_than_shards_split_rows():
    plan = plan_stream(GROUPS[:2], 3, _count(3), micro_batch=4)
    assert plan.by_rows and plan.samples == (17, 17, 16) and plan.batches_per_epoch == 4
    pages = [p for s in range(3) for b in _batches(plan, s, 0) for p, _ in b]
    assert len(pages) == len(set(pages)) == 48
    with pytest.raises(ValueError, match="fewer than one micro-batch of 32"):
        plan_stream(GROUPS[:2], 3, _count(3), micro_batch=32)


def test_epochs_differ_and_a_replay_from_any_micro_batch_gives_the_same_tail():
    plan = plan_stream(GROUPS, 2, _count(2), micro_batch=4)
    first = _batches(plan, 1, epoch=0)
    assert first == _batches(plan, 1, epoch=0)  # deterministic in (seed, epoch, shard)
    assert first != _batches(plan, 1, epoch=1)
    for skip in (1, 7, len(first) - 1):
        assert _batches(plan, 1, epoch=0, skip=skip) == first[skip:]


def test_micro_batches_group_similar_lengths():
    plan = plan_stream(GROUPS, 1, _count(1), micro_batch=4)
    grouped = _batches(plan, 0, 0, window=10)
    spread = np.mean([max(s[1] for s in b) - min(s[1] for s in b) for b in grouped])
    plain = _batches(plan, 0, 0, window=1)  # a window of one micro-batch: no grouping
    assert spread < 0.5 * np.mean([max(s[1] for s in b) - min(s[1] for s in b) for b in plain])


def test_the_shuffle_buffer_holds_at_most_its_size():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    out = shuffled(source(), 10, np.random.default_rng(0))
    first = next(out)
    assert len(pulled) == 11 and first in range(11)  # ten held, the eleventh displaced one
    rest = list(out)
    assert sorted([first] + rest) == list(range(100)) and [first] + rest != list(range(100))


def test_length_grouped_drops_only_a_partial_last_micro_batch():
    batches = list(length_grouped(iter(range(23)), 4, 2, lambda s: s, np.random.default_rng(0)))
    assert [len(b) for b in batches] == [4] * 5 and len({s for b in batches for s in b}) == 20


@pytest.mark.parametrize("workers,start", [(1, 5), (3, 0), (3, 7), (4, 9), (4, 12)])
def test_workers_resume_in_the_order_of_the_first_run(workers, start):
    # the first run: micro-batch j of the epoch is stream j mod W's (j div W)-th
    per_stream = 6
    streams = [[(s, n) for n in range(per_stream)] for s in range(workers)]
    original = [streams[j % workers][j // workers] for j in range(workers * per_stream)]
    # the resumed run: worker w plays a stream and skips; a DataLoader takes batches round robin from worker 0
    iters = []
    for w in range(workers):
        stream, skip = worker_role(w, workers, start)
        iters.append(iter(streams[stream][skip:]))
    resumed = [b for b in itertools.chain.from_iterable(itertools.zip_longest(*iters)) if b is not None]
    assert resumed == original[start:]
