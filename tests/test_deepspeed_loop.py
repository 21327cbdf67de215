"""How the training loop's processes share one list of micro-batches (split_by_rank); the loop itself, its resume
and its two-process run are exercised through the stages in test_train and test_align_stage."""

import pytest

from genrec.train.deepspeed_loop import split_by_rank


def _epochs(n: int):
    """Micro-batches named by (epoch, position), a different order per epoch."""
    return lambda epoch: [(epoch, i) for i in (range(n) if epoch % 2 == 0 else reversed(range(n)))]


@pytest.mark.parametrize("world,grad_accum", [(1, 1), (1, 3), (2, 3), (4, 2)])
def test_each_step_takes_the_same_micro_batches_as_one_list_cut_in_steps(world, grad_accum):
    epoch_batches, per_step = _epochs(29), world * grad_accum
    ranks = [split_by_rank(epoch_batches, r, world, grad_accum) for r in range(world)]
    steps = 29 // per_step
    assert {r.per_epoch for r in ranks} == {steps * grad_accum}
    for epoch in (0, 1):
        mine = [list(r.read(epoch, 0)) for r in ranks]
        for step in range(steps):
            taken = {m for r in range(world) for m in mine[r][step * grad_accum:(step + 1) * grad_accum]}
            # step s of the epoch: the list's micro-batches s*per_step .. s*per_step + per_step - 1, none twice
            assert taken == set(epoch_batches(epoch)[step * per_step:(step + 1) * per_step])
        # the micro-batches that cannot fill a step are left out, on every rank
        assert sum(len(m) for m in mine) == steps * per_step


def test_a_resumed_read_gives_the_rest_of_the_epoch():
    rank = split_by_rank(_epochs(40), 1, 2, 4)
    whole = list(rank.read(3, 0))
    for skip in (0, 4, 8, 19):
        assert list(rank.read(3, skip)) == whole[skip:]


def test_too_few_micro_batches_for_one_step():
    with pytest.raises(ValueError, match=r"5 micro-batches, need grad_accum x processes = 6"):
        split_by_rank(_epochs(5), 0, 2, 3)
