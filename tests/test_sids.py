"""RQ-KMeans semantic IDs: invariants, collision handling, the trie, the stage, and bad input."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.errors import InputDataError
from genrec.sid.rqkmeans import (auto_codebook_size, check_embeddings, collision_rate, encode, fit_rq_kmeans,
                                 resolve_collisions)
from genrec.sid.trie import SidTrie
from genrec.stages.assign_sids import run_assign_sids
from genrec.validation import checks as C
from genrec.validation.runner import GxProject, TableValidation, check_table


def _clustered(n=2000, d=16, k=20, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    labels = rng.integers(0, k, n)
    x = (centers[labels] + rng.normal(size=(n, d))).astype(np.float32)
    return x, labels


def test_rq_kmeans_is_deterministic_and_reduces_error_level_by_level():
    x, _ = _clustered()
    a, b = fit_rq_kmeans(x, [16, 16, 16], 20, 0, 10_000), fit_rq_kmeans(x, [16, 16, 16], 20, 0, 10_000)
    assert all(np.array_equal(p, q) for p, q in zip(a.centroids, b.centroids))
    codes, inputs = encode(x, a)
    assert codes.shape == (2000, 3) and codes.min() >= 0 and codes.max() < 16
    errs = [((inputs[level] - a.centroids[level][codes[:, level]]) ** 2).sum(1).mean() for level in range(3)]
    assert errs[0] > errs[1] > errs[2]
    assert np.allclose(a.decode(codes) + (inputs[2] - a.centroids[2][codes[:, 2]]), x, atol=1e-4)


def test_level1_recovers_planted_clusters():
    from sklearn.metrics import normalized_mutual_info_score

    x, labels = _clustered(k=16)
    codes, _ = encode(x, fit_rq_kmeans(x, [16, 8, 8], 25, 0, 10_000))
    assert normalized_mutual_info_score(labels, codes[:, 0]) > 0.9


def test_collisions_resolved_without_touching_level_one():
    x, _ = _clustered(n=600)
    x[:40] = x[0]  # forty identical items: same codes for all of them
    books = fit_rq_kmeans(x, [16, 16, 16], 20, 0, 10_000)
    codes, inputs = encode(x, books)
    assert collision_rate(codes) > 0.05
    fixed, moved = resolve_collisions(codes, inputs, books)
    assert collision_rate(fixed) == 0 and moved >= 39
    assert np.array_equal(fixed[:, 0], codes[:, 0])
    unchanged = (codes == fixed).all(axis=1)
    assert unchanged.sum() == len(x) - moved


def test_unfixable_collisions_fail_clearly():
    x = np.repeat(np.eye(2, 4, dtype=np.float32), 40, axis=0)  # 80 items, two distinct vectors
    books = fit_rq_kmeans(x, [2, 2, 2], 5, 0, 1000)
    codes, inputs = encode(x, books)
    with pytest.raises(InputDataError, match="increase sid.codebook_size"):
        resolve_collisions(codes, inputs, books)


def test_trie_matches_brute_force_and_roundtrips(tmp_path):
    rng = np.random.default_rng(1)
    codes = np.unique(rng.integers(0, 6, (120, 3)), axis=0)
    trie = SidTrie(codes, [6, 6, 6])
    assert trie.allowed(()).tolist() == sorted(set(codes[:, 0]))
    for p in [(0,), (3,), (2, 4), (5, 5)]:
        expect = sorted({int(c[len(p)]) for c in codes if tuple(c[:len(p)]) == p})
        assert trie.allowed(p).tolist() == expect
    everything = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    truth = {tuple(c) for c in codes}
    assert trie.contains(everything).tolist() == [tuple(c) in truth for c in everything]
    trie.save(tmp_path / "t.npz")
    back = SidTrie.load(tmp_path / "t.npz")
    assert back.allowed((2, 4)).tolist() == trie.allowed((2, 4)).tolist()
    assert back.contains(codes).all() and trie.allowed((1, 2, 3)).size == 0
    # the dense per-level masks (batched decoding) say the same as allowed() for every prefix that exists
    for level in range(3):
        keys, mask = trie.level_mask(level)
        prefixes = np.unique(codes[:, :level], axis=0)
        assert np.array_equal(keys, np.sort(trie.prefix_keys(prefixes)))
        for prefix, key in zip(prefixes, trie.prefix_keys(prefixes)):
            assert np.flatnonzero(mask[np.searchsorted(keys, key)]).tolist() == trie.allowed(tuple(prefix)).tolist()


@pytest.mark.parametrize("x, ids, message", [
    (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), "non-empty"),
    (np.ones((3, 4), np.float32), np.arange(4), "do not belong together"),
    (np.array([[1, np.nan], [0, 1]], np.float32), np.array([7, 8]), r"NaN or infinite values; first item ids: \[7\]"),
    (np.ones(4, np.float32), np.arange(4), "non-empty"),
    (np.ones((2, 4), np.float32), np.array([5, 5]), "not unique"),
])
def test_bad_embeddings_are_rejected(x, ids, message):
    with pytest.raises(InputDataError, match=message):
        check_embeddings(x, ids)


def test_auto_codebook_size_scales_with_the_catalog():
    assert auto_codebook_size(100, 3) == 16 and auto_codebook_size(10_000_000, 3) == 256
    assert auto_codebook_size(5_000, 3) < auto_codebook_size(50_000, 3)


def test_sid_table_check_catches_duplicates(tmp_path):
    table = pd.DataFrame({"item_id": [1, 2, 3], "s1": [0, 0, 1], "s2": [1, 1, 2], "s3": [3, 3, 9]})
    rep = TableValidation("sid_table", 3)
    check_table(GxProject(tmp_path), table, "sid_table", C.sid_checks(3, [8, 8, 8]), rep)
    failed = {r.name for r in rep.results if not r.success}
    assert failed == {"sid_unique", "s3_in_range"}


def test_assign_sids_stage(make_cfg, tmp_path):
    x, labels = _clustered(n=800, k=8)
    emb = tmp_path / "emb"
    emb.mkdir()
    np.save(emb / "embeddings.npy", x)
    np.save(emb / "item_ids.npy", np.arange(100, 900))
    (tmp_path / "val").mkdir()
    cats = [f"Top{label % 4} > Leaf{label}" for label in labels]
    pq.write_table(pa.table({"item_id": np.arange(100, 900), "category": cats}), tmp_path / "val" / "items.parquet")
    report = run_assign_sids(make_cfg(), emb, tmp_path / "val", tmp_path / "out", "sids-stage")
    assert report["collision_rate_after"] == 0 and report["sid_table_valid"]
    assert report["nmi_level1_leaf_category"] > 0.6  # 8 planted clusters split over ~40 level-1 codes
    table = pq.read_table(tmp_path / "out" / "sid_table.parquet").to_pandas()
    assert len(table) == 800 and not table.duplicated(["s1", "s2", "s3"]).any()
    trie = SidTrie.load(tmp_path / "out" / "trie.npz")
    assert trie.contains(table[["s1", "s2", "s3"]].to_numpy()).all()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["codebook_size"] == report["codebook_size"]
