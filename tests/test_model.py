"""The GenRec model: vocabulary, Token Merger, target-side loss, samples, beam search with the KV cache, save/load."""

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.errors import ConfigError, InputDataError
from genrec.model.beam_search import beam_search
from genrec.model.genrec_model import GenRecModel, build_model
from genrec.model.samples import build_samples, collate, encode_prompt, encode_sample, Sample, shuffle_target_items
from genrec.model.vocab import SidMap


def _sid_map(n=300, sizes=(8, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, sizes[0], (n, 3)), axis=0)
    return SidMap(np.arange(1000, 1000 + len(codes)), codes, sizes)


@pytest.fixture(scope="module")
def sid_map():
    return _sid_map()


def _model(sid_map, tm=True, seed=0):
    torch.manual_seed(seed)
    return build_model("tiny", "", sid_map.sizes, tm, sid_map.fingerprint()).eval()


def test_vocabulary_layout_and_sid_map(sid_map):
    vocab = _model(sid_map).vocab
    assert (vocab.pad, vocab.bos, vocab.sep, vocab.eos) == (0, 1, 2, 3) and vocab.vocab_size == 4 + 24
    assert vocab.code_tokens(np.array([[0, 0, 0], [7, 7, 7]])).tolist() == [[4, 12, 20], [11, 19, 27]]
    items = sid_map.item_ids[:3]
    assert sid_map.items_of(sid_map.item_codes(items)).tolist() == items.tolist()
    missing = next(c for c in np.ndindex(8, 8, 8) if not (sid_map.codes == c).all(1).any())
    assert sid_map.items_of(np.array([missing])).tolist() == [-1]
    with pytest.raises(InputDataError, match=r"2 item ids in page p9 have no semantic ID .*first: \[5, 6\]"):
        sid_map.rows([items[0], 5, 6], "page p9")


def test_token_merger_shapes_and_prompt_length(sid_map):
    history = sid_map.item_codes(sid_map.item_ids[:7])
    merged_ids, merged_flag = encode_prompt(history, _model(sid_map).vocab, token_merger=True)
    flat_ids, flat_flag = encode_prompt(history, _model(sid_map).vocab, token_merger=False)
    assert merged_ids.shape == (7 + 2, 3) and merged_flag.sum() == 7  # <bos> 7 items <sep>
    assert flat_ids.shape[0] == 7 * 3 + 2 and not flat_flag.any()  # every code its own position
    m = _model(sid_map)
    emb = m.embed(torch.from_numpy(merged_ids)[None], torch.from_numpy(merged_flag)[None])
    assert emb.shape == (1, 9, m.lm.config.hidden_size)
    # at initialisation a merged item is the mean of its code embeddings; special tokens stay unmerged
    table = m.lm.get_input_embeddings().weight
    assert torch.allclose(emb[0, 1], table[merged_ids[1]].mean(0), atol=1e-6)
    assert torch.allclose(emb[0, 0], table[m.vocab.bos]) and torch.allclose(emb[0, -1], table[m.vocab.sep])


def test_target_side_loss_is_next_token_cross_entropy_over_the_target_only(sid_map):
    ids = sid_map.item_ids
    samples = [Sample("a", 1, list(ids[:5]), list(ids[5:8])), Sample("b", 2, list(ids[8:9]), list(ids[9:10]))]
    per_mode = {}
    for tm in (True, False):
        m = _model(sid_map, tm)
        enc = [encode_sample(s, sid_map, m.vocab, tm) for s in samples]
        batch = collate(enc, m.vocab.pad)
        logits = m(batch["ids"], batch["is_item"], batch["attention_mask"]).logits
        logp = torch.log_softmax(logits, -1)
        terms = [-logp[r, t - 1, lab[t]] for r, (_, _, lab) in enumerate(enc) for t in range(len(lab)) if lab[t] >= 0]
        assert torch.allclose(m.loss(batch), torch.stack(terms).mean(), atol=1e-5)
        # padding changes nothing: the batch loss is the token-weighted mean of the samples' own losses
        alone = [m.loss(collate([e], m.vocab.pad)) for e in enc]
        n_tok = [int((e[2] >= 0).sum()) for e in enc]
        assert torch.allclose(m.loss(batch), sum(a * n for a, n in zip(alone, n_tok)) / sum(n_tok), atol=1e-5)
        per_mode[tm] = [e[2][e[2] >= 0].tolist() for e in enc]
    # the target side is the same ordinary SID tokens with or without the merger: 3 items x (3 codes + sep/eos)
    assert per_mode[True] == per_mode[False] and len(per_mode[True][0]) == 3 * 4
    assert per_mode[True][0][3] == 2 and per_mode[True][0][-1] == 3  # <sep> between items, <eos> at the end


def test_label_smoothing_spreads_eps_over_the_codes_of_the_targets_own_level(sid_map):
    m = _model(sid_map)
    samples = [Sample("a", 1, list(sid_map.item_ids[:4]), list(sid_map.item_ids[4:6]))]
    enc = [encode_sample(s, sid_map, m.vocab, True) for s in samples]
    batch = collate(enc, m.vocab.pad)
    logp = torch.log_softmax(m(batch["ids"], batch["is_item"], batch["attention_mask"]).logits, -1)
    eps, terms = 0.2, []
    for t, lab in enumerate(enc[0][2]):
        if lab < 0:
            continue
        row = logp[0, t - 1]
        if lab >= 4:  # a code: its level's 8 codes start at 4 + 8 * level (vocab test above)
            start = 4 + 8 * ((lab - 4) // 8)
            terms.append(-(1 - eps) * row[lab] - eps * row[start:start + 8].mean())
        else:  # <sep> / <eos>: one-hot
            terms.append(-row[lab])
    assert len(terms) == 2 * 4
    assert torch.allclose(m.loss(batch, label_smoothing=eps), torch.stack(terms).mean(), atol=1e-5)
    assert not torch.allclose(m.loss(batch, label_smoothing=eps), m.loss(batch), atol=1e-4)
    with pytest.raises(ConfigError, match="copy head"):
        build_model("tiny", "", sid_map.sizes, True, sid_map.fingerprint(), copy_head=True).loss(batch, 0.0, eps)


def _pages(rows):
    cols = ["page_id", "user_id", "history_items", "ordered_items", "carted_items", "clicked_items", "exposed_items"]
    return pd.DataFrame(rows, columns=cols)


def test_samples_order_targets_by_intensity_and_take_only_the_history():
    pages = _pages([("p1", 1, [1, 2, 3, 4], [9], [], [7, 8], [5, 6]),
                    ("p2", 1, [], [], [], [3], [4]),  # no history: skipped, counted
                    ("p3", 2, [1], [], [], [], [5])])  # exposures only
    samples, counts = build_samples(pages, "page", ["order", "cart", "click", "expose"], max_history=3, max_target_items=4)
    assert [s.page_id for s in samples] == ["p1", "p3"] and counts.skipped_empty_history == 1
    assert samples[0].history == [2, 3, 4] and samples[0].target == [9, 7, 8, 5] and counts.truncated_targets == 1
    clicks, counts = build_samples(pages, "point", ["order", "click"], max_history=10, max_target_items=20)
    assert [(s.page_id, s.target) for s in clicks] == [("p1", [9]), ("p1", [7]), ("p1", [8])]
    assert counts.skipped_empty_target == 1


@pytest.mark.parametrize("tm", [True, False])
def test_shuffled_targets_are_the_sample_encoded_with_its_items_permuted(sid_map, tm):
    ids = [int(i) for i in sid_map.item_ids]
    m = _model(sid_map, tm)
    s = Sample("p", 1, ids[:3], ids[10:15])
    perm = np.random.default_rng(5).permutation(5)
    got = shuffle_target_items(encode_sample(s, sid_map, m.vocab, tm), m.vocab.levels, np.random.default_rng(5))
    want = encode_sample(Sample("p", 1, ids[:3], [ids[10 + k] for k in perm]), sid_map, m.vocab, tm)
    assert perm.tolist() != list(range(5))
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_training_set_shuffles_targets_per_epoch_and_sample_reproducibly(sid_map):
    from genrec.stages.train_sft import TrainingSet

    ids = [int(i) for i in sid_map.item_ids]
    m = _model(sid_map, False)
    enc = [encode_sample(Sample(f"p{k}", 1, ids[:3], ids[10 + 6 * k:16 + 6 * k]), sid_map, m.vocab, False)
           for k in range(4)]
    plain = TrainingSet(m, enc, np.array([len(e[0]) for e in enc]), {})
    shuffled = TrainingSet(m, enc, np.array([len(e[0]) for e in enc]), {}, shuffle_seed=42)
    rows = np.array([2, 0])
    assert torch.equal(plain.make_batch(rows, 0)["labels"], collate([enc[2], enc[0]], m.vocab.pad)["labels"])
    e0, e0_again, e1 = (shuffled.make_batch(rows, e)["labels"] for e in (0, 0, 1))
    assert torch.equal(e0, e0_again) and not torch.equal(e0, e1)  # the same epoch: the same orders (a resume)
    for b in (e0, e1):  # a permutation of each target's items: the same multiset of item blocks
        for r, k in enumerate(rows):
            lab = b[r][b[r] >= 0].view(-1, 4)
            want = torch.from_numpy(enc[k][2][enc[k][2] >= 0]).view(-1, 4)
            assert sorted(map(tuple, lab[:, :3].tolist())) == sorted(map(tuple, want[:, :3].tolist()))
            assert torch.equal(lab[:, 3], want[:, 3])  # <sep> between items, <eos> last


def test_the_prompt_holds_exactly_the_history(sid_map):
    """No leakage: the page's own items reach the model only on the target side."""
    ids = sid_map.item_ids
    m = _model(sid_map)
    s = Sample("p", 1, [int(ids[0]), int(ids[1])], [int(ids[2]), int(ids[3])])
    tok, flag, labels = encode_sample(s, sid_map, m.vocab, True)
    prompt = tok[labels < 0]
    # <bos>, the two history items (merged positions), <sep>: nothing else, so no target token
    assert prompt.shape[0] == 4 and flag[labels < 0].tolist() == [False, True, True, False]
    assert prompt[0, 0] == m.vocab.bos and prompt[3, 0] == m.vocab.sep
    assert (prompt[1:3] == m.vocab.code_tokens(sid_map.item_codes(s.history))).all()
    with pytest.raises(InputDataError, match="the target of page p"):
        encode_sample(Sample("p", 1, s.history, [12345]), sid_map, m.vocab, True)


@pytest.mark.parametrize("tm", [True, False])
def test_beam_search_scores_match_full_forward_and_the_trie_holds(sid_map, tm):
    """Cached, batched, left-padded decoding after a (merged) prompt gives the exact sequence log-probabilities."""
    m = _model(sid_map, tm, seed=1)
    hist = [sid_map.item_codes(sid_map.item_ids[:6]), sid_map.item_codes(sid_map.item_ids[10:12])]
    out = beam_search(m, hist, sid_map, beam=20, constrained=True)
    assert out.items.shape == (2, 20) and (out.items >= 0).all()
    assert all(len(set(row)) == 20 for row in out.items)  # distinct items
    assert (np.diff(out.scores, axis=1) <= 1e-6).all()  # best first
    for r in range(2):
        for b in (0, 7):
            p_ids, p_flag = encode_prompt(hist[r], m.vocab, tm)
            target = m.vocab.code_tokens(out.codes[r, b])
            ids = np.concatenate([p_ids, np.repeat(target[:, None], 3, 1)])
            flag = np.concatenate([p_flag, np.zeros(3, bool)])
            with torch.no_grad():
                logp = torch.log_softmax(m(torch.from_numpy(ids)[None], torch.from_numpy(flag)[None]).logits[0], -1)
            direct = sum(float(logp[len(p_ids) - 1 + j, target[j]]) for j in range(3))
            assert abs(direct - out.scores[r, b]) < 1e-4, (r, b, direct, out.scores[r, b])
    again = beam_search(m, hist, sid_map, beam=20, constrained=True)
    assert np.array_equal(again.items, out.items) and np.array_equal(again.scores, out.scores)  # deterministic
    free = beam_search(m, hist, sid_map, beam=20, constrained=False)
    assert (free.items == -1).any()  # an untrained model hallucinates without the trie
    assert (free.scores[:, 0] >= out.scores[:, 0] - 1e-6).all()  # per request, the free best is at least the constrained best
    with pytest.raises(InputDataError, match="empty history"):
        beam_search(m, [hist[0], hist[0][:0]], sid_map, beam=5, constrained=True)


def test_dropout_acts_in_training_only_and_survives_save_and_load(sid_map, tmp_path):
    m = build_model("tiny", "", sid_map.sizes, False, sid_map.fingerprint(), dropout=0.3)
    assert all(layer.self_attn.attention_dropout == 0.3 for layer in m.lm.model.layers)
    ids = torch.from_numpy(np.repeat(m.vocab.code_tokens(sid_map.item_codes(sid_map.item_ids[:1])[0])[:, None], 3, 1))[None]
    flags = torch.zeros(1, ids.shape[1], dtype=torch.bool)
    m.train()
    torch.manual_seed(0)
    a = m(ids, flags).logits
    assert not torch.allclose(a, m(ids, flags).logits)  # a different mask each pass
    m.eval()
    assert torch.equal(m(ids, flags).logits, m(ids, flags).logits)
    again = GenRecModel.load(m.save(tmp_path / "m"))
    assert again.dropout == 0.3 and again.lm.model.layers[0].self_attn.attention_dropout == 0.3
    assert torch.allclose(again(ids, flags).logits, m(ids, flags).logits)


def test_hidden_dropout_drops_block_outputs_in_training_only(sid_map, tmp_path):
    m = build_model("tiny", "", sid_map.sizes, False, sid_map.fingerprint(), hidden_dropout=0.3)
    plain = build_model("tiny", "", sid_map.sizes, False, sid_map.fingerprint())
    assert m.state_dict().keys() == plain.state_dict().keys()  # hooks, not new modules: Qwen checkpoints still load
    plain.load_state_dict(m.state_dict())
    seen = []
    m.lm.model.layers[0].mlp.down_proj.register_forward_hook(lambda mod, i, out: seen.append(out.detach()))
    ids = torch.from_numpy(np.repeat(m.vocab.code_tokens(sid_map.item_codes(sid_map.item_ids[:4])[0])[:, None], 3, 1))[None]
    flags = torch.zeros(1, ids.shape[1], dtype=torch.bool)
    m.train()
    torch.manual_seed(0)
    assert not torch.allclose(m(ids, flags).logits, m(ids, flags).logits)
    zeros = (seen[-1] == 0).float().mean().item()
    assert 0.15 < zeros < 0.45, zeros  # about 30% of the MLP's output is dropped
    m.eval()
    assert torch.allclose(m(ids, flags).logits, plain.eval()(ids, flags).logits)  # inert when not training
    assert (seen[-1] != 0).all()
    again = GenRecModel.load(m.save(tmp_path / "m"))
    assert again.hidden_dropout == 0.3
    again.train()
    assert not torch.allclose(again(ids, flags).logits, again(ids, flags).logits)


def test_item_embeddings_start_inert_then_separate_items_that_share_codes(sid_map, tmp_path):
    from genrec.model.genrec_model import item_bucket

    torch.manual_seed(0)
    m = build_model("tiny", "", sid_map.sizes, True, sid_map.fingerprint(), item_embedding_buckets=512).eval()
    plain = build_model("tiny", "", sid_map.sizes, True, sid_map.fingerprint()).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("item_table")})
    batch = collate([encode_sample(Sample("a", 1, list(sid_map.item_ids[:4]), [int(sid_map.item_ids[4])]), sid_map,
                                   m.vocab, True)], m.vocab.pad)
    assert torch.equal(m(batch["ids"], batch["is_item"]).logits, plain(batch["ids"], batch["is_item"]).logits)
    # Items differing in their last code only get different rows (the hash covers the whole SID).
    codes = torch.from_numpy(m.vocab.code_tokens(sid_map.codes))
    buckets = item_bucket(codes, 100_000)
    assert len(set(buckets.tolist())) == len(codes)
    with torch.no_grad():
        m.item_table.weight.normal_()
    emb = m.embed(batch["ids"], batch["is_item"])
    is_item = batch["is_item"][0]
    assert not torch.allclose(emb[0, is_item], plain.embed(batch["ids"], batch["is_item"])[0, is_item])
    assert torch.equal(emb[0, ~is_item], plain.embed(batch["ids"], batch["is_item"])[0, ~is_item])  # targets: codes
    again = GenRecModel.load(m.save(tmp_path / "m"))
    assert again.item_table.num_embeddings == 512
    assert torch.equal(again(batch["ids"], batch["is_item"]).logits, m(batch["ids"], batch["is_item"]).logits)


def test_item_embeddings_without_the_merger_add_the_items_row_to_each_of_its_code_positions(sid_map, tmp_path):
    from genrec.model.genrec_model import item_bucket

    torch.manual_seed(0)
    m = build_model("tiny", "", sid_map.sizes, False, sid_map.fingerprint(), item_embedding_buckets=512).eval()
    plain = build_model("tiny", "", sid_map.sizes, False, sid_map.fingerprint()).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("item_table")})
    history, target = list(sid_map.item_ids[:4]), [int(sid_map.item_ids[4]), int(sid_map.item_ids[5])]
    ids, flags, labels = encode_sample(Sample("a", 1, history, target), sid_map, m.vocab, False)
    # Column 0 is still each position's token; a history position's row is its item's SID rotated.
    tokens = m.vocab.code_tokens(sid_map.item_codes(history))
    assert ids[1:13, 0].tolist() == tokens.reshape(-1).tolist()
    assert ids[1:13].reshape(4, 3, 3).tolist() == [[np.roll(t, -j).tolist() for j in range(3)] for t in tokens]
    batch = collate([(ids, flags, labels)], m.vocab.pad)
    assert torch.equal(m(batch["ids"], batch["is_item"]).logits, plain(batch["ids"], batch["is_item"]).logits)
    with torch.no_grad():
        m.item_table.weight.normal_()
    added = (m.embed(batch["ids"], batch["is_item"]) - plain.embed(batch["ids"], batch["is_item"]))[0]
    rows = m.item_table.weight[item_bucket(torch.from_numpy(tokens), 512)]
    assert torch.allclose(added[1:13], rows.repeat_interleave(3, dim=0), atol=1e-6)  # each code of item k: row k
    assert torch.equal(added[0], torch.zeros_like(added[0])) and not added[13:].any()  # <bos>, <sep> and targets
    again = GenRecModel.load(m.save(tmp_path / "m"))
    assert torch.equal(again(batch["ids"], batch["is_item"]).logits, m(batch["ids"], batch["is_item"]).logits)
    with pytest.raises(ConfigError, match="at least 2 levels"):
        build_model("tiny", "", (8,), False, "", item_embedding_buckets=512)


def test_item_softmax_adds_each_target_items_cross_entropy_over_the_catalogs_rows(sid_map):
    from genrec.model.genrec_model import catalog_buckets, item_bucket

    torch.manual_seed(0)
    m = build_model("tiny", "", sid_map.sizes, True, sid_map.fingerprint(), item_embedding_buckets=512).eval()
    with torch.no_grad():
        m.item_table.weight.normal_()
    history, target = list(sid_map.item_ids[:4]), [int(sid_map.item_ids[6]), int(sid_map.item_ids[7])]
    batch = collate([encode_sample(Sample("a", 1, history, target), sid_map, m.vocab, True)], m.vocab.pad)
    cands = catalog_buckets(sid_map.codes, m.vocab, 512)
    codes = torch.from_numpy(m.vocab.code_tokens(sid_map.codes))
    assert cands.tolist() == sorted(set(item_bucket(codes, 512).tolist()))
    # By hand: the states predicting each target item's first code are the prompt's <sep> (position 5) and the
    # first item's <sep> (5 + 4); logits are dot products with the catalog's rows.
    hidden = m(batch["ids"], batch["is_item"]).hidden[0]
    rows = m.item_table.weight[cands]
    want = 0.0
    for pos, item in ((5, target[0]), (9, target[1])):
        bucket = item_bucket(torch.from_numpy(m.vocab.code_tokens(sid_map.item_codes([item]))), 512)
        logp = torch.log_softmax(hidden[pos] @ rows.T, dim=-1)
        want -= logp[cands.tolist().index(int(bucket))] / 2
    base = m.loss(batch)
    assert torch.allclose(m.loss(batch, item_softmax_weight=0.5, item_candidates=cands), base + 0.5 * want)
    # The target items' rows learn although neither item is in the history.
    m.item_table.weight.grad = None
    m.loss(batch, item_softmax_weight=0.5, item_candidates=cands).backward()
    target_rows = item_bucket(torch.from_numpy(m.vocab.code_tokens(sid_map.item_codes(target))), 512)
    assert (m.item_table.weight.grad[target_rows].abs().sum(-1) > 0).all()
    plain = build_model("tiny", "", sid_map.sizes, True, sid_map.fingerprint())
    with pytest.raises(ConfigError, match="item_embedding_buckets"):
        plain.loss(batch, item_softmax_weight=0.5, item_candidates=cands)


def test_rerank_with_item_softmax_adds_the_weighted_item_logprob_and_keeps_empty_beams_last():
    from genrec.model.item_softmax import rerank_with_item_softmax

    scores = torch.tensor([[-1.0, -2.0, -3.0, float("-inf")]])
    item_lp = torch.tensor([[-5.0, -1.0, -2.0, -1.0]])
    new, order = rerank_with_item_softmax(scores, item_lp, 0.5)
    assert order.tolist() == [[1, 0, 2, 3]]  # -3.5, -2.5, -4.0 -> beams 1, 0, 2; the empty beam stays last
    assert new[0, :3].tolist() == [-2.5, -3.5, -4.0] and new[0, 3] == float("-inf")


def test_beam_search_with_an_item_weight_reranks_the_same_beams_by_the_item_softmax(sid_map):
    from genrec.model.beam_search import left_pad_prompts
    from genrec.model.genrec_model import catalog_buckets, item_bucket
    from genrec.model.item_softmax import item_softmax_logprobs

    torch.manual_seed(0)
    m = build_model("tiny", "", sid_map.sizes, True, sid_map.fingerprint(), item_embedding_buckets=512).eval()
    with torch.no_grad():
        m.item_table.weight.normal_(std=3.0)
    histories = [sid_map.item_codes(sid_map.item_ids[:3]), sid_map.item_codes(sid_map.item_ids[4:6])]
    plain = beam_search(m, histories, sid_map, beam=6, constrained=True)
    mixed = beam_search(m, histories, sid_map, beam=6, constrained=True, item_weight=2.0)
    cands = catalog_buckets(sid_map.codes, m.vocab, 512)
    ids, is_item, attn, pos = left_pad_prompts(histories, m, "cpu")
    with torch.no_grad():
        state = m(ids, is_item, attn, position_ids=pos).hidden[:, -1]
        for r in range(2):
            tokens = torch.from_numpy(m.vocab.code_tokens(sid_map.item_codes(plain.items[r])))
            lp = item_softmax_logprobs(state[r:r + 1], item_bucket(tokens, 512)[None], m.item_table(cands), cands)
            want = plain.scores[r] + 2.0 * lp[0].numpy()
            order = np.argsort(-want, kind="stable")
            assert mixed.items[r].tolist() == plain.items[r][order].tolist()
            assert np.allclose(mixed.scores[r], want[order], atol=1e-4)
        assert not np.array_equal(mixed.items, plain.items)  # the rows this large do move the order
        # a SID no catalog item has gets no item probability
        assert item_softmax_logprobs(state[:1], torch.tensor([[int(cands.max()) + 1]]), m.item_table(cands),
                                     cands).item() == float("-inf")
    with pytest.raises(ConfigError, match="eval.item_rerank_weight"):
        beam_search(_model(sid_map), histories, sid_map, beam=6, constrained=True, item_weight=1.0)


def test_beam_wider_than_the_catalog_pads_with_empty_beams():
    small = SidMap(np.array([1, 2, 3]), np.array([[0, 0, 0], [0, 1, 0], [1, 0, 1]]), (2, 2, 2))
    out = beam_search(_model(small), [small.item_codes([1])], small, beam=5, constrained=True)
    assert sorted(out.items[0, :3].tolist()) == [1, 2, 3] and out.items[0, 3:].tolist() == [-1, -1]
    assert np.isinf(out.scores[0, 3:]).all()


def test_save_and_load_roundtrip_reads_safetensors_only(sid_map, tmp_path):
    m = _model(sid_map)
    with torch.no_grad():
        m.merger.bias.add_(0.1)  # a trained-looking merger
    m.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["genrec_model.json", "model.safetensors"]
    back = GenRecModel.load(tmp_path / "m")
    batch = collate([encode_sample(Sample("a", 1, list(sid_map.item_ids[:4]), [int(sid_map.item_ids[4])]), sid_map,
                                   m.vocab, True)], m.vocab.pad)
    assert torch.equal(m(batch["ids"], batch["is_item"]).logits, back(batch["ids"], batch["is_item"]).logits)
    assert back.token_merger and back.sid_fingerprint == sid_map.fingerprint()
    with pytest.raises(ConfigError, match="not a genrec model folder"):
        GenRecModel.load(tmp_path)


def test_a_pretrained_qwen2_checkpoint_gets_its_embeddings_resized(sid_map, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=64, tie_word_embeddings=True))
    base.save_pretrained(tmp_path / "qwen")
    m = build_model("tiny", str(tmp_path / "qwen"), sid_map.sizes, True, sid_map.fingerprint())
    table = m.lm.get_input_embeddings().weight.detach()
    assert m.vocab.offset == 100 and table.shape[0] == 100 + m.vocab.n_tokens
    assert torch.equal(table[:100], base.get_input_embeddings().weight.detach())  # its own tokens untouched
    new = table[100:]
    assert torch.isfinite(new).all() and (new.mean(0) - table[:100].mean(0)).norm() < table[:100].std(0).norm()
    assert beam_search(m, [sid_map.item_codes(sid_map.item_ids[:3])], sid_map, 4, True).items.min() >= 0
    with pytest.raises(ConfigError, match="no config.json"):
        build_model("tiny", str(tmp_path), sid_map.sizes, True, "")
