"""Ranking metrics against hand-computed cases, and the popularity baseline."""

import math

import numpy as np
import pandas as pd
import pytest

from genrec.eval.baselines import popularity_ranking, user_sequences
from genrec.eval.metrics import bootstrap_interval, hallucination_rate, per_request_metrics, ranking_metrics


def test_metrics_match_hand_computed_cases():
    ranked = np.array([[5, 1, 7, 2],    # truth {1, 2}: hits at ranks 2 and 4
                       [3, 4, 8, 9],    # truth {9}: hit at rank 4
                       [6, 6, 6, 6]])   # truth {7}: no hit
    truths = [{1, 2}, {9}, {7}]
    m = ranking_metrics(ranked, truths, [1, 2, 4])
    assert m["hr@1"] == 0 and m["hr@2"] == pytest.approx(1 / 3) and m["hr@4"] == pytest.approx(2 / 3)
    ndcg4_a = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    ndcg4_b = (1 / math.log2(5)) / 1
    assert m["ndcg@4"] == pytest.approx((ndcg4_a + ndcg4_b + 0) / 3)
    assert m["ndcg@2"] == pytest.approx(((1 / math.log2(3)) / (1 + 1 / math.log2(3))) / 3)
    assert m["recall@4"] == pytest.approx((1 + 1 + 0) / 3) and m["recall@2"] == pytest.approx(0.5 / 3)


def test_a_repeated_item_counts_once_and_bad_calls_are_clear():
    m = ranking_metrics(np.array([[4, 4, 5]]), [{4, 5}], [3])
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    with pytest.raises(ValueError, match="exceeds the 3 ranked items"):
        ranking_metrics(np.array([[1, 2, 3]]), [{1}], [10])
    with pytest.raises(ValueError, match="without a true item"):
        ranking_metrics(np.array([[1, 2, 3]]), [set()], [1])


def test_hallucination_rate():
    assert hallucination_rate(np.array([[1, -1, 3, -1], [-1, 2, 2, 2]])) == pytest.approx(3 / 8)
    assert hallucination_rate(np.array([[1, -1, 3, -1], [-1, 2, 2, 2]]), top=1) == pytest.approx(1 / 2)


def test_per_request_values_and_their_bootstrap_interval():
    per = per_request_metrics(np.array([[5, 1], [3, 4], [-1, 7]]), [{1}, {9}, {7}], 2)
    np.testing.assert_allclose(per["hr@2"], [1, 0, 1])
    np.testing.assert_allclose(per["ndcg@2"], [1 / math.log2(3), 0, 1 / math.log2(3)])
    assert bootstrap_interval(np.full(50, 0.25), seed=0) == (0.25, 0.25)
    # 0/1 hits at p = 0.3 over 2,000 requests: the normal approximation's half-width is 1.96 * sqrt(p(1-p)/n)
    hits = (np.random.default_rng(1).random(2000) < 0.3).astype(float)
    low, high = bootstrap_interval(hits, seed=0)
    half = 1.96 * math.sqrt(hits.mean() * (1 - hits.mean()) / len(hits))
    assert low < hits.mean() < high and (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_interval(hits, seed=0) == (low, high)  # seeded


def test_paired_differences_resample_requests_jointly():
    from genrec.stages.evaluate import paired_differences

    rng = np.random.default_rng(2)
    truths = [{int(t)} for t in rng.integers(0, 5, 2000)]
    base = np.array([[t, 9] if rng.random() < 0.3 else [8, 9] for (t,) in truths])  # hits 30% of requests
    better = base.copy()  # the same hits plus 5% more: the difference is small but certain
    for n in np.flatnonzero((base[:, 0] != [min(t) for t in truths]) & (rng.random(len(truths)) < 0.07)):
        better[n, 1] = min(truths[n])
    rankings = {"a": better, "b": base}
    diff = paired_differences(rankings, truths, [2], seed=0, pairs=[("a", "b"), ("b", "b")])
    mean, low, high = diff["a - b"]["hr@2"]
    assert mean == pytest.approx(per_request_metrics(better, truths, 2)["hr@2"].mean()
                                 - per_request_metrics(base, truths, 2)["hr@2"].mean())
    assert 0 < low < mean < high  # ahead: the paired interval excludes 0
    unpaired = [bootstrap_interval(per_request_metrics(r, truths, 2)["hr@2"], 0) for r in (better, base)]
    assert unpaired[0][0] < unpaired[1][1]  # while the two methods' own intervals overlap
    assert diff["b - b"]["hr@2"] == [0.0, 0.0, 0.0] and set(diff["a - b"]) == {"hr@2", "ndcg@2"}


def test_popularity_counts_positive_interactions_only():
    pages = pd.DataFrame({"ordered_items": [[3], [], []], "carted_items": [[], [3], []],
                          "clicked_items": [[2, 3], [2, 1], [1, 4]], "exposed_items": [[9, 9, 9], [9], [9]]})
    # per page an item counts once (3 in page 1 is ordered and clicked); ties go to the smaller id; 9 is only exposed
    assert popularity_ranking(pages, 5).tolist() == [1, 2, 3, 4]
    # the same counts when the pages stream past a batch at a time, in any order
    ids, counts = popularity_ranking((pages.iloc[[i]] for i in (2, 0, 1)), 5, with_counts=True)
    assert ids.tolist() == [1, 2, 3, 4] and counts.tolist() == [2, 2, 2, 1]


def test_sasrec_sequences_are_the_last_training_page_history_plus_its_positives():
    ts = pd.Timestamp("2026-10-01", tz="UTC")
    pages = pd.DataFrame({"page_id": ["a", "b", "c", "d"], "user_id": [1, 1, 1, 2],
                          "page_start": [ts, ts + pd.Timedelta(hours=1), ts + pd.Timedelta(hours=2), ts],
                          "history_items": [[], [10], [10, 11], [10]],
                          "ordered_items": [[], [], [], []], "carted_items": [[], [], [], []],
                          "clicked_items": [[10], [11], [], [12]], "exposed_items": [[5], [6], [7], [8]]})
    # user 1: page c has no positive, so b is the last one; rows are 1-based positions in the catalog
    assert user_sequences(pages, {10: 1, 11: 2, 12: 3}) == [[1, 2], [1, 3]]
    # streamed a page at a time, latest first: the latest page with a positive still wins
    assert user_sequences((pages.iloc[[i]] for i in (3, 2, 1, 0)), {10: 1, 11: 2, 12: 3}) == [[1, 2], [1, 3]]


def test_untrained_sasrec_scores_the_catalog_near_uniformly_and_learns_a_successor_rule():
    """An untrained SASRec starts near ln(catalog) and learns a planted rule: after item i comes item i + 1.
    (With N(0, 1) embeddings the first loss was 42 here, and Amazon Beauty reached R@10 0.010 after 10 epochs
    against 0.067.)"""
    import torch

    from genrec.config import SasrecConfig
    from genrec.eval.baselines import SASRec, sasrec_rank, train_sasrec

    n_items, max_len, cfg = 300, 8, SasrecConfig(epochs=15, dropout=0.0, lr=3e-3)
    torch.manual_seed(0)
    untrained = SASRec(n_items, cfg, max_len).eval()
    seq, labels = torch.randint(1, n_items + 1, (2, 64, max_len))
    with torch.no_grad():
        first_loss = torch.nn.functional.cross_entropy(untrained.scores(untrained.hidden(seq)).flatten(0, 1)[:, 1:],
                                                       labels.flatten() - 1)
    assert abs(first_loss.item() - np.log(n_items)) < 0.5
    rng = np.random.default_rng(0)
    starts = rng.integers(1, n_items - max_len, 600)
    histories = [list(range(s, s + 4)) for s in range(1, n_items - 5, 7)]
    successor = np.array([h[-1] + 1 for h in histories])
    curve = {}  # the per-epoch hook (bench/sasrec_epochs.py) sees the model as it trains

    def on_epoch(epoch, m):
        curve[epoch] = np.mean(sasrec_rank(m.eval(), histories, max_len, top=1)[:, 0] == successor)
        m.train()

    model = train_sasrec([list(range(s, s + max_len + 1)) for s in starts], n_items, cfg, max_len, 0, on_epoch)
    top1 = sasrec_rank(model, histories, max_len, top=1)[:, 0]
    assert np.mean(top1 == successor) > 0.9
    assert sorted(curve) == list(range(1, cfg.epochs + 1))
    assert curve[cfg.epochs] == np.mean(top1 == successor) and curve[1] < curve[cfg.epochs]
    # A hook that answers True stops training after that epoch (evaluate's early stopping on validation).
    seen = []
    train_sasrec([list(range(s, s + max_len + 1)) for s in starts], n_items, cfg, max_len, 0,
                 lambda epoch, m: seen.append(epoch) or epoch == 2)
    assert seen == [1, 2]


def test_bert4rec_masks_at_least_one_item_per_sequence_and_learns_a_successor_rule():
    """The cloze batches never mask padding and always mask something; an untrained model scores the catalog
    near uniformly; trained on runs of consecutive items, it fills a [mask] after a history with the
    successor."""
    import torch

    from genrec.config import Bert4recConfig
    from genrec.eval.bert4rec import BERT4Rec, bert4rec_rank, cloze_batch, train_bert4rec

    items = np.array([[0, 0, 0, 5], [0, 3, 4, 5], [1, 2, 3, 4]])
    inputs, masked = cloze_batch(items, 0.01, 99, np.random.default_rng(0))
    assert masked.any(axis=1).all() and not masked[items == 0].any()
    assert (inputs[masked] == 99).all() and (inputs[~masked] == items[~masked]).all()

    n_items, max_len, cfg = 300, 8, Bert4recConfig(epochs=40, dropout=0.0, lr=3e-3)
    torch.manual_seed(0)
    untrained = BERT4Rec(n_items, cfg, max_len).eval()
    seq = torch.randint(1, n_items + 1, (64, max_len))
    with torch.no_grad():
        first_loss = torch.nn.functional.cross_entropy(untrained.scores(untrained.hidden(seq))[:, :, 1:].flatten(0, 1),
                                                       seq.flatten() - 1)
    assert abs(first_loss.item() - np.log(n_items)) < 0.5
    rng = np.random.default_rng(0)
    runs = [list(range(s, s + n)) for s, n in zip(rng.integers(1, n_items - max_len, 600), rng.integers(3, max_len + 1, 600))]
    model = train_bert4rec(runs, n_items, cfg, max_len, seed=0)
    histories = [list(range(s, s + 4)) for s in range(1, n_items - 5, 7)]
    top1 = bert4rec_rank(model, histories, max_len, top=1)[:, 0]
    assert np.mean(top1 == np.array([h[-1] + 1 for h in histories])) > 0.9


def test_demo_targets_script_fails_on_a_lost_metric_or_high_har(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    def write(genrec_hr10, har):
        row = {"hr@10": 0.30, "ndcg@10": 0.17}
        test = {"genrec": {"hr@10": genrec_hr10, "ndcg@10": 0.20, "har": har}, "popularity": row, "sasrec": row}
        valid = {"genrec": {"hr@10": 0.35, "ndcg@10": 0.20, "har": 0.0}, "popularity": row, "sasrec": row}
        pair = {m: [0.01, -0.01, 0.03] for m in ("hr@10", "ndcg@10")}
        paired = {s: {"genrec - popularity": pair, "genrec - sasrec": pair} for s in ("test", "valid")}
        for name, data in (("metrics.json", test), ("metrics_valid.json", valid), ("paired.json", paired)):
            (tmp_path / name).write_text(json.dumps(data))
        script = Path(__file__).parent.parent / "bench" / "demo_targets.py"
        return subprocess.run([sys.executable, str(script), "--eval", str(tmp_path)], capture_output=True, text=True)

    ok = write(0.36, 0.0)
    assert ok.returncode == 0 and "all demo targets hold" in ok.stdout, ok.stdout + ok.stderr
    lost = write(0.29, 0.0)  # below both baselines at HR@10 on the test day
    assert lost.returncode == 1 and lost.stdout.count("FAIL") == 2, lost.stdout
    har = write(0.36, 0.07)
    assert har.returncode == 1 and "FAIL  genrec free-decoding HaR 0.07" in har.stdout, har.stdout
