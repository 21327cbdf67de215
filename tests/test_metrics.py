"""Ranking metrics against hand-computed cases, and the popularity baseline."""

import math

import numpy as np
import pandas as pd
import pytest

from genrec.eval.baselines import popularity_ranking, user_sequences
from genrec.eval.metrics import hallucination_rate, ranking_metrics


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


def test_popularity_counts_positive_interactions_only():
    pages = pd.DataFrame({"ordered_items": [[3], [], []], "carted_items": [[], [3], []],
                          "clicked_items": [[2, 3], [2, 1], [1, 4]], "exposed_items": [[9, 9, 9], [9], [9]]})
    # per page an item counts once (3 in page 1 is ordered and clicked); ties go to the smaller id; 9 is only exposed
    assert popularity_ranking(pages, 5).tolist() == [1, 2, 3, 4]


def test_sasrec_sequences_are_the_last_training_page_history_plus_its_positives():
    ts = pd.Timestamp("2026-10-01", tz="UTC")
    pages = pd.DataFrame({"page_id": ["a", "b", "c", "d"], "user_id": [1, 1, 1, 2],
                          "page_start": [ts, ts + pd.Timedelta(hours=1), ts + pd.Timedelta(hours=2), ts],
                          "history_items": [[], [10], [10, 11], [10]],
                          "ordered_items": [[], [], [], []], "carted_items": [[], [], [], []],
                          "clicked_items": [[10], [11], [], [12]], "exposed_items": [[5], [6], [7], [8]]})
    # user 1: page c has no positive, so b is the last one; rows are 1-based positions in the catalog
    assert user_sequences(pages, {10: 1, 11: 2, 12: 3}) == [[1, 2], [1, 3]]
