"""The rank head (RankGR's refined scoring phase) on hand-made inputs: the kept candidates, the BCE target,
two-stage decoding inside the SID trie scoring items exactly as training scores them, and save/load."""

import math

import numpy as np
import pytest
import torch

from genrec.align.ldpo import isolated_items_batch, item_states, item_token_logprobs, rank_head_logits
from genrec.model.beam_search import beam_search
from genrec.model.genrec_model import GenRecModel, build_model
from genrec.model.rank_head import keep_candidates, rank_head_bce
from genrec.model.vocab import SidMap


def test_kept_candidates_follow_the_trie_and_always_hold_the_true_code():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    allowed = torch.tensor([[True, False, True, True, True]])
    assert keep_candidates(logits, allowed, None, 3).tolist() == [[0, 2, 3]]
    assert keep_candidates(logits, allowed, torch.tensor([4]), 3).tolist() == [[0, 2, 4]]  # replaces the last kept
    assert keep_candidates(logits, allowed, torch.tensor([2]), 3).tolist() == [[0, 2, 3]]  # already kept
    assert keep_candidates(logits, None, None, 2).tolist() == [[0, 1]]
    one = torch.tensor([[False, True, False, False, False]])
    assert keep_candidates(logits, one, None, 3).tolist() == [[1, 1, 1]]  # fewer allowed codes than lambda


def test_rank_head_bce_against_a_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    loss = rank_head_bce(logits, torch.tensor([[3, 5, 7]]), torch.tensor([5]))
    # y = 0, 1, 0: -log(1 - s(2)), -log(s(-1)), -log(1 - s(0))
    expected = (math.log(1 + math.exp(2)) + math.log(1 + math.exp(1)) + math.log(2)) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)


@pytest.fixture
def ranked():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 4, (30, 3)), axis=0)
    sid_map = SidMap(np.arange(len(codes)) + 100, codes, (4, 4, 4))
    model = build_model("tiny", "", (4, 4, 4), True, sid_map.fingerprint())
    model.add_rank_head((3, 2, 3))
    return model.eval(), sid_map, [codes[[0, 5, 9]], codes[[2]], codes[[7, 1]]]


def test_two_stage_decoding_stays_in_the_trie_and_scores_as_training_does(ranked):
    model, sid_map, hist = ranked
    out = beam_search(model, hist, sid_map, beam=6, constrained=True)
    assert (out.items >= 0).all() and np.isin(out.items, sid_map.item_ids).all()
    assert (np.diff(out.scores, axis=1) <= 1e-6).all()
    assert all(len(set(row)) == len(row) for row in out.items.tolist())
    # an item's score is the sum over levels of log s(code), s from the rank head as the training loss computes it
    with torch.no_grad():
        batch = isolated_items_batch(hist, [c[:1] for c in out.codes], model.vocab, model.token_merger)
        states = item_states(model, batch)
        idx = torch.arange(len(hist))
        total = sum(torch.nn.functional.logsigmoid(rank_head_logits(model, batch, states, idx, level, torch.from_numpy(
            out.codes[:, 0, level:level + 1]))).squeeze(1) for level in range(3))
    np.testing.assert_allclose(total.numpy(), out.scores[:, 0], atol=1e-5)
    # without the rank head: the one-stage search of the same backbone
    plain = beam_search(model, hist, sid_map, beam=6, constrained=True, use_rank_head=False)
    model.rank, rank = None, model.rank
    np.testing.assert_array_equal(plain.items, beam_search(model, hist, sid_map, beam=6, constrained=True).items)
    model.rank = rank


def test_a_head_with_the_model_feature_starts_as_the_models_order_and_decodes_as_training_scores(ranked):
    model, sid_map, hist = ranked
    rank = model.rank
    torch.manual_seed(1)
    model.add_rank_head((3, 2, 3), model_feature=True)
    try:
        out = beam_search(model, hist, sid_map, beam=6, constrained=True)
        with torch.no_grad():
            batch = isolated_items_batch(hist, [c[:1] for c in out.codes], model.vocab, model.token_merger)
            states = item_states(model, batch)
            idx = torch.arange(len(hist))
            per_level = [rank_head_logits(model, batch, states, idx, level, torch.from_numpy(
                out.codes[:, 0, level:level + 1])).squeeze(1) for level in range(3)]
            log_p = item_token_logprobs(model, batch, states)  # (R, L): the model's own per-code log p
        for level in range(3):  # a fresh head's logit is the model's log-probability of the code
            torch.testing.assert_close(per_level[level], log_p[:, level], atol=1e-5, rtol=0)
        total = sum(torch.nn.functional.logsigmoid(x) for x in per_level)
        np.testing.assert_allclose(total.numpy(), out.scores[:, 0], atol=1e-5)
        with torch.no_grad():  # and it learns: the MLP's correction moves the logits
            model.rank.mlp[-1].bias.fill_(0.5)
        moved = rank_head_logits(model, batch, states, idx, 0, torch.from_numpy(out.codes[:, 0, :1])).squeeze(1)
        torch.testing.assert_close(moved, per_level[0] + 0.5)
    finally:
        model.rank = rank


def test_a_model_weight_adds_the_models_own_log_probability_to_the_refined_score(ranked):
    model, sid_map, hist = ranked
    model.rank.model_weight = 0.5
    try:
        out = beam_search(model, hist, sid_map, beam=6, constrained=True)
    finally:
        model.rank.model_weight = 0.0
    assert (out.items >= 0).all() and (np.diff(out.scores, axis=1) <= 1e-6).all()
    with torch.no_grad():  # for each request's best item: sum of log s + 0.5 * log p(item)
        batch = isolated_items_batch(hist, [c[:1] for c in out.codes], model.vocab, model.token_merger)
        states = item_states(model, batch)
        idx = torch.arange(len(hist))
        log_s = sum(torch.nn.functional.logsigmoid(rank_head_logits(model, batch, states, idx, level, torch.from_numpy(
            out.codes[:, 0, level:level + 1]))).squeeze(1) for level in range(3))
        log_p = item_token_logprobs(model, batch, states).sum(dim=1)
    np.testing.assert_allclose((log_s + 0.5 * log_p).numpy(), out.scores[:, 0], atol=1e-5)


def test_the_rank_head_is_saved_and_loaded(ranked, tmp_path):
    model, sid_map, hist = ranked
    model.rank.model_weight = 0.25
    model.save(tmp_path / "m")
    model.rank.model_weight = 0.0
    loaded = GenRecModel.load(tmp_path / "m")
    assert loaded.rank is not None and loaded.rank.lambdas == (3, 2, 3) and loaded.rank.model_weight == 0.25
    assert not loaded.rank.model_feature
    loaded.rank.model_weight = 0.0
    a, b = (beam_search(m, hist, sid_map, beam=4, constrained=True) for m in (model, loaded))
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    with pytest.raises(Exception, match="one lambda per SID level"):
        model.add_rank_head((3, 3))
    featured = GenRecModel.load(tmp_path / "m")
    featured.add_rank_head((3, 2, 3), model_feature=True)
    featured.save(tmp_path / "f")
    assert GenRecModel.load(tmp_path / "f").rank.model_feature
