"""The copy head (genrec.model.copy_head): slots, the mixture, and decoding / rollouts / GRPO log-probs agreeing."""

import math

import numpy as np
import pytest
import torch

from genrec.align.grpo_loss import rollout_batch, token_logprobs
from genrec.align.rollouts import sample_rollouts
from genrec.errors import ConfigError
from genrec.model.beam_search import PrefixMasks, beam_search, left_pad_prompts
from genrec.model.copy_head import history_slots, mixture_token_logprobs
from genrec.model.genrec_model import GenRecModel, build_model
from genrec.model.samples import Sample, collate, encode_sample
from genrec.model.vocab import SidMap


@pytest.fixture(scope="module")
def sid_map():
    codes = np.unique(np.random.default_rng(0).integers(0, 8, (300, 3)), axis=0)
    return SidMap(np.arange(1000, 1000 + len(codes)), codes, (8, 8, 8))


def _model(sid_map, tm, copy_head=True, gate_bias=None, seed=0):
    torch.manual_seed(seed)
    m = build_model("tiny", "", sid_map.sizes, tm, sid_map.fingerprint(), copy_head=copy_head)
    if gate_bias is not None:
        with torch.no_grad():
            m.copy.gate.weight.zero_()
            m.copy.gate.bias.fill_(gate_bias)
    return m.eval()


def test_mixture_token_logprobs_match_a_hand_computation():
    # Two levels; p_gen(code0) = 0.5, p_gen(code1 | code0) = 0.4; copy mass on the prefix 0.3, on the item 0.1; g = 0.25.
    gen = torch.log(torch.tensor([[0.5, 0.4]]))
    copy = torch.log(torch.tensor([[0.3, 0.1]]))
    g = torch.tensor([0.25])
    out = mixture_token_logprobs(gen, copy, torch.log(g), torch.log(1 - g))
    prefix, item = 0.75 * 0.5 + 0.25 * 0.3, 0.75 * 0.2 + 0.25 * 0.1
    assert torch.allclose(out, torch.tensor([[math.log(prefix), math.log(item / prefix)]]), atol=1e-6)
    # No copy mass (an item not in the history): the generated probability, scaled by 1 - g
    none = mixture_token_logprobs(gen, torch.full((1, 2), float("-inf")), torch.log(g), torch.log(1 - g))
    assert abs(float(none.sum()) - math.log(0.75 * 0.2)) < 1e-6


@pytest.mark.parametrize("tm", [True, False])
def test_history_slots_find_each_history_item_in_left_padded_prompts(sid_map, tm):
    m = _model(sid_map, tm)
    hist = [sid_map.item_codes(sid_map.item_ids[[3, 9, 4]]), sid_map.item_codes(sid_map.item_ids[[7]])]
    ids, is_item, attn, _ = left_pad_prompts(hist, m, "cpu")
    slots = history_slots(ids, is_item, attn.bool(), m.vocab)
    assert slots.valid.tolist() == [[True, True, True], [True, False, False]]
    assert torch.equal(slots.codes[0], torch.from_numpy(hist[0])) and torch.equal(slots.codes[1, 0],
                                                                                  torch.from_numpy(hist[1][0]))
    assert slots.recency[0].tolist() == [2, 1, 0] and slots.recency[1, 0] == 0  # the newest item has rank 0


@pytest.mark.parametrize("tm", [True, False])
def test_beam_scores_are_the_mixture_item_logprobs_and_a_copying_gate_ranks_the_history_first(sid_map, tm):
    m = _model(sid_map, tm, gate_bias=0.0)
    hist = [sid_map.item_codes(sid_map.item_ids[[3, 9, 4, 20]]), sid_map.item_codes(sid_map.item_ids[[7, 8]])]
    out = beam_search(m, hist, sid_map, beam=12, constrained=True)
    # Teacher-forced log p_mix(item) of the beams (GRPO's token_logprobs, summed) equals the beam scores.
    batch = rollout_batch(hist, out.codes[:, :5], m.vocab, tm)
    with torch.no_grad():
        tf = token_logprobs(m, batch, 3).sum(dim=1).view(2, 5).numpy()
    assert np.allclose(tf, out.scores[:, :5], atol=1e-4)
    copying = _model(sid_map, tm, gate_bias=12.0)  # g ~ 1: almost all the mass is on the history items
    top = beam_search(copying, hist, sid_map, beam=12, constrained=True).items
    assert set(top[0, :4]) == set(sid_map.item_ids[[3, 9, 4, 20]]) and set(top[1, :2]) == set(sid_map.item_ids[[7, 8]])
    plain = beam_search(_model(sid_map, tm, copy_head=False), hist, sid_map, beam=12, constrained=True).items
    assert not set(plain[0, :4]) == set(sid_map.item_ids[[3, 9, 4, 20]])  # the untrained backbone alone does not copy


def test_a_closed_gate_gives_exactly_the_plain_model(sid_map):
    batch = collate([encode_sample(Sample("p", 1, list(sid_map.item_ids[:5]), list(sid_map.item_ids[5:8])), sid_map,
                                   _model(sid_map, False).vocab, False)], 0)
    closed = _model(sid_map, False, gate_bias=-1e4)
    plain = _model(sid_map, False, copy_head=False)  # same seed: the same backbone weights
    assert torch.allclose(closed.loss(batch), plain.loss(batch), atol=1e-6)


def test_the_generator_weight_adds_the_backbones_own_nll(sid_map):
    batch = collate([encode_sample(Sample("p", 1, list(sid_map.item_ids[:5]), [int(sid_map.item_ids[2]), 1009]),
                                   sid_map, _model(sid_map, False).vocab, False)], 0)
    m = _model(sid_map, False, gate_bias=0.0)
    plain = _model(sid_map, False, copy_head=False)  # the same backbone: its loss is the generator's own NLL
    assert torch.allclose(m.loss(batch, 0.5), m.loss(batch) + 0.5 * plain.loss(batch), atol=1e-5)
    assert not torch.allclose(m.loss(batch), plain.loss(batch))


def test_training_the_loss_reaches_the_gate_and_copied_targets_gain(sid_map):
    """A page whose target repeats a history item: the gradient opens the gate and the loss falls below the plain
    model's, which has to generate the item's three codes."""
    m = _model(sid_map, False, gate_bias=0.0).train()
    sample = Sample("p", 1, list(sid_map.item_ids[:5]), [int(sid_map.item_ids[2])])
    batch = collate([encode_sample(sample, sid_map, m.vocab, False)], m.vocab.pad)
    loss = m.loss(batch)
    loss.backward()
    assert m.copy.gate.bias.grad.item() < 0  # descending the gradient raises g
    assert loss.item() < _model(sid_map, False, copy_head=False).loss(batch).item()


def test_rollouts_sample_from_the_mixture(sid_map):
    hist, masks = [sid_map.item_codes(sid_map.item_ids[[3, 9, 4]])], PrefixMasks(sid_map.trie())
    gen = torch.Generator().manual_seed(0)
    _, items = sample_rollouts(_model(sid_map, False, gate_bias=12.0), hist, sid_map, 16, 1.0, True, masks, gen)
    assert set(items[0]) <= set(sid_map.item_ids[[3, 9, 4]])  # g ~ 1: every rollout is a history item
    gen = torch.Generator().manual_seed(0)
    _, items = sample_rollouts(_model(sid_map, False, gate_bias=-1e4), hist, sid_map, 16, 1.0, True, masks, gen)
    assert not set(items[0]) <= set(sid_map.item_ids[[3, 9, 4]])


def test_save_and_load_keep_the_copy_head(sid_map, tmp_path):
    m = _model(sid_map, True, gate_bias=1.5)
    m.save(tmp_path / "m")
    back = GenRecModel.load(tmp_path / "m")
    assert back.copy_head and back.copy.gate.bias.item() == 1.5
    hist = [sid_map.item_codes(sid_map.item_ids[[3, 9]])]
    a, b = beam_search(m, hist, sid_map, 5, True), beam_search(back, hist, sid_map, 5, True)
    assert np.array_equal(a.items, b.items) and np.allclose(a.scores, b.scores)


def test_a_generator_weight_on_a_model_without_a_copy_head_is_an_error(sid_map):
    plain = _model(sid_map, False, copy_head=False)
    batch = collate([encode_sample(Sample("p", 1, list(sid_map.item_ids[:3]), [1005]), sid_map, plain.vocab, False)], 0)
    with pytest.raises(ConfigError, match="copy head"):
        plain.loss(batch, 1.0)
