"""LDPO pieces on hand-made inputs: preference levels of a page, sampled negatives, the target-isolating mask
(an item's log-probabilities do not depend on the page's other items and equal those of the prompt followed by
that item alone), and the loss against a hand computation."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.align.grpo_loss import prompt_item_batch, token_logprobs
from genrec.align.ldpo import (NEGATIVE_LEVEL, isolated_items_batch, item_token_logprobs, ldpo_loss, ntp_loss,
                               preference_pages, sample_negatives)
from genrec.model.genrec_model import build_model


def test_preference_levels_of_a_page():
    pages = pd.DataFrame([
        {"page_id": "p1", "history_items": [1, 2, 3], "ordered_items": [7], "carted_items": [8],
         "clicked_items": [9, 7], "exposed_items": [7, 9, 10, 11]},
        {"page_id": "p2", "history_items": [], "ordered_items": [], "carted_items": [], "clicked_items": [4],
         "exposed_items": []},
        {"page_id": "p3", "history_items": [5], "ordered_items": [], "carted_items": [], "clicked_items": [],
         "exposed_items": []},
    ])
    prefs, counts = preference_pages(pages, max_history=2, max_items=4)
    assert [p.page_id for p in prefs] == ["p1"]
    p = prefs[0]
    # each item once, at its strongest level; carts and clicks share a level; the weakest are cut beyond 4
    assert p.history == [2, 3] and p.items == [7, 8, 9, 10] and p.levels == [0, 1, 1, 2]
    assert p.groups == ["order", "cart", "click", "expose"]
    assert (counts.skipped_empty_history, counts.skipped_no_item, counts.truncated, counts.kept) == (1, 1, 1, 1)


def test_sampled_negatives_avoid_the_page_items():
    rng = np.random.default_rng(0)
    catalog = np.arange(10)
    neg = sample_negatives(rng, catalog, [0, 1, 2, 3, 4, 5, 6], 5)
    assert sorted(neg) == [7, 8, 9]  # only three items are left: fewer, never a page item, no repeats
    again = sample_negatives(np.random.default_rng(0), catalog, [0], 4)
    assert len(set(again)) == 4 and 0 not in again


@pytest.mark.parametrize("token_merger,copy_head", [(True, False), (False, False), (True, True), (False, True)])
def test_each_item_is_scored_as_if_it_followed_the_prompt_alone(token_merger, copy_head):
    torch.manual_seed(0)
    model = build_model("tiny", "", (4, 4, 4), token_merger, "x", copy_head=copy_head).eval()
    if copy_head:  # a gate that copies, so the mixture matters
        torch.nn.init.constant_(model.copy.gate.bias, 1.0)
    vocab = model.vocab
    hist = [np.array([[0, 1, 2], [3, 3, 1], [1, 2, 0]]), np.array([[2, 2, 2]])]
    items = [np.array([[1, 0, 3], [3, 3, 1], [0, 2, 2]]), np.array([[2, 1, 0], [2, 2, 2]])]
    with torch.no_grad():
        logp = item_token_logprobs(model, isolated_items_batch(hist, items, vocab, token_merger))
        # the same items, each after its prompt in a row of its own (how GRPO-SR and decoding score an item)
        alone = token_logprobs(model, prompt_item_batch(hist, items, vocab, token_merger), vocab.levels)
        # change the page's first item: the others' log-probabilities stay exactly as they were
        changed = [np.array([[2, 3, 0], [3, 3, 1], [0, 2, 2]]), items[1]]
        logp2 = item_token_logprobs(model, isolated_items_batch(hist, changed, vocab, token_merger))
    torch.testing.assert_close(logp, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logp[0], logp2[0])
    torch.testing.assert_close(logp[1:], logp2[1:], atol=0, rtol=0)


def test_ldpo_loss_against_a_hand_computation():
    # page 0: levels 0, 1, 3 (a negative); page 1: two items of level 1 and one of level 2
    scores = torch.tensor([-1.0, -2.0, -4.0, -3.0, -1.5, -2.5], requires_grad=True)
    levels = torch.tensor([0, 1, NEGATIVE_LEVEL, 1, 1, 2])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    beta = 0.5

    def term(k, lower):
        return -math.log(math.exp(beta * k) / (math.exp(beta * k) + sum(math.exp(beta * i) for i in lower)))

    expected = np.mean([term(-1.0, [-2.0, -4.0]), term(-2.0, [-4.0]),  # page 0: the negative has nothing below it
                        term(-3.0, [-2.5]), term(-1.5, [-2.5])])  # page 1: the level-2 item has nothing below it
    loss = ldpo_loss(scores, levels, group, beta)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert scores.grad[0] < 0 and scores.grad[2] > 0  # raise the preferred item, lower the negative
    # a page with one level only contributes nothing; no such pair at all: 0 with a gradient
    flat = ldpo_loss(scores, torch.zeros(6, dtype=torch.int64), group, beta)
    assert float(flat) == 0 and flat.requires_grad


def test_ntp_loss_covers_the_flagged_items_only():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-9.0, -9.0, -9.0], [-0.5, -0.5, -0.5]])
    assert float(ntp_loss(logp, torch.tensor([True, False, True]))) == pytest.approx((6 + 1.5) / 6)
    assert float(ntp_loss(logp, torch.zeros(3, dtype=torch.bool))) == 0


def test_pseudo_exposures_are_read_by_page_and_bad_rows_quarantined():
    from genrec.align.ldpo import pseudo_exposures

    table = pd.DataFrame({"request_id": [7, 7, 7, 8, 9, None], "item_id": [5, 3, 99, 4, 6, 2],
                          "rank": [11, 10, 12, 10, 10, 10]})
    by_page, bad = pseudo_exposures(table, np.arange(10), "pseudo.parquet")
    assert by_page == {"r7": [3, 5], "r8": [4], "r9": [6]}  # best ranked first
    assert sorted(bad["quarantine_reason"]) == ["item has no semantic ID", "missing value"]
    with pytest.raises(Exception, match="pseudo.parquet.*rank"):
        pseudo_exposures(table.drop(columns="rank"), np.arange(10), "pseudo.parquet")
    pages = pd.DataFrame([{"page_id": "r7", "history_items": [1], "ordered_items": [], "carted_items": [],
                           "clicked_items": [3], "exposed_items": [8]}])
    prefs, _ = preference_pages(pages, 10, 10, by_page)
    assert prefs[0].items == [3, 8] and prefs[0].pseudo == [5]  # a logged item is not also pseudo-exposed


def test_a_page_ranks_its_pseudo_exposures_last_and_samples_negatives_only_without_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genrec.align.ldpo import NEGATIVE_LEVEL, PSEUDO_LEVEL
    from genrec.align.ldpo_training import ldpo_training
    from genrec.config import load_config
    from genrec.model.vocab import SidMap

    codes = np.stack(np.unravel_index(np.arange(40), (4, 4, 4)), axis=1)
    sid_map = SidMap(np.arange(40), codes, (4, 4, 4))
    pages = pd.DataFrame([{"page_id": f"r{r}", "history_items": [1, 2], "ordered_items": [], "carted_items": [],
                           "clicked_items": [10 + r], "exposed_items": [20 + r]} for r in range(2)])
    pq.write_table(pa.table({"request_id": [0, 0], "item_id": [30, 31], "rank": [10, 11]}),
                   tmp_path / "pseudo_exposures.parquet")
    cfg = load_config(None, ["align.method=ldpo", "align.ldpo.negatives=3", "model.size=tiny",
                             "align.ldpo.reference=false"])  # eq. 8's plain pi: no reference model to load
    model = build_model("tiny", "", (4, 4, 4), True, sid_map.fingerprint())
    train = ldpo_training(cfg, model, pages, sid_map, tmp_path, tmp_path, tmp_path, torch.device("cpu"))
    assert train.report["pages_with_pseudo_exposures"] == 1
    batch = train.make_batch(np.array([0, 1]))
    levels, rows = batch["item_level"].tolist(), batch["item_row"].tolist()
    page0 = [lv for lv, r in zip(levels, rows) if r == 0]
    page1 = [lv for lv, r in zip(levels, rows) if r == 1]
    assert page0 == [1, 2, PSEUDO_LEVEL, PSEUDO_LEVEL]  # click, expose, its two pseudo-exposures
    assert page1 == [1, 2] + [NEGATIVE_LEVEL] * 3  # no pseudo-exposure: three sampled items
    loss, stats = train.loss_fn(model, batch)
    assert torch.isfinite(loss) and stats["loss_ldpo"] > 0

    # align.ldpo.reference: items scored by pi - pi_ref. With the reference equal to the policy every log-ratio is
    # 0, so each item with n less preferred items on its page costs log(1 + n) exactly, and the gradient still flows
    model.save(tmp_path / "sft")
    ref_cfg = load_config(None, ["align.method=ldpo", "align.ldpo.negatives=3", "model.size=tiny",
                                 "align.ldpo.reference=true", "align.ldpo.beta=0.5"])
    ref_train = ldpo_training(ref_cfg, model, pages, sid_map, tmp_path, tmp_path, tmp_path / "sft",
                              torch.device("cpu"))
    model.eval()
    loss, stats = ref_train.loss_fn(model, ref_train.make_batch(np.array([0, 1])))
    # page 0: click above 3 items, exposure above 2; page 1: click above 4, exposure above 3
    expected = (math.log(4) + math.log(3) + math.log(5) + math.log(4)) / 4
    assert stats["loss_ldpo"] == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    assert ref_train.report["reference"] is True


def test_prompt_pages_are_the_usable_pages_a_seeded_sample_in_time_order():
    import pandas as pd

    from genrec.align.training import prompt_pages

    ts = pd.Timestamp("2026-10-01", tz="UTC")
    pages = pd.DataFrame({
        "page_id": [f"p{i}" for i in range(60)], "user_id": [i % 6 for i in range(60)],
        "page_start": [ts + pd.Timedelta(minutes=(37 * i) % 60) for i in range(60)],
        "history_items": [[] if i % 10 == 0 else [1, 2] for i in range(60)],
        "ordered_items": [[] for _ in range(60)], "carted_items": [[] for _ in range(60)],
        "clicked_items": [[3] if i % 3 == 0 else [] for i in range(60)], "exposed_items": [[4] for _ in range(60)]})
    usable = lambda groups: {f"p{i}" for i in range(60) if i % 10 and (i % 3 == 0 or "expose" in groups)}  # noqa: E731
    batches = lambda: (pages.iloc[lo:lo + 7] for lo in range(0, 60, 7))  # noqa: E731
    every, read = prompt_pages(batches(), ["order", "cart", "click"], 0, seed=3)
    assert read == 60 and set(every["page_id"]) == usable(["click"])  # GRPO-SR: an engaged item
    assert set(prompt_pages(batches(), ["order", "cart", "click", "expose"], 0, 3)[0]["page_id"]) == usable(["expose"])
    a, _ = prompt_pages(batches(), ["click"], 7, seed=3)
    b, _ = prompt_pages([pages.iloc[::-1]], ["click"], 7, seed=3)  # another layout, the same sample
    assert len(a) == 7 and a["page_id"].tolist() == b["page_id"].tolist() and set(a["page_id"]) < usable(["click"])
    assert a["page_start"].is_monotonic_increasing
    assert set(prompt_pages(batches(), ["click"], 7, seed=4)[0]["page_id"]) != set(a["page_id"])