"""MovieLens-100K and Amazon Beauty through ingest, validate-events, sessionize and validate-pages."""

import pytest

from genrec.stages.ingest import run_ingest
from genrec.stages.sessionize import run_sessionize
from genrec.stages.validate_events import run_validate_events
from genrec.stages.validate_pages import run_validate_pages

pytestmark = pytest.mark.spark


def _run_all(cfg, tmp_path, spark, run_id):
    manifest = run_ingest(cfg, tmp_path / "ingest", run_id)
    events_report = run_validate_events(cfg, tmp_path / "ingest", tmp_path / "validated", run_id)
    sess = run_sessionize(cfg, tmp_path / "validated", tmp_path / "sessionized", run_id, spark=spark)
    pages_report = run_validate_pages(cfg, tmp_path / "sessionized", tmp_path / "pages", run_id)
    return manifest, events_report, sess, pages_report


def test_movielens_end_to_end(make_cfg, shared_data, tmp_path, spark):
    cfg = make_cfg("source.kind=movielens", f"source.path={shared_data / 'movielens-100k'}")
    manifest, ev, sess, pages = _run_all(cfg, tmp_path, spark, "real-movielens")
    assert manifest["n_events"] == 100_000 and manifest["period_start"].startswith("1997-09-")
    assert ev["passed"] and all(t["rows_quarantined"] == 0 for t in ev["tables"])
    assert sess["n_events"] == 100_000
    assert sess["n_pages_test"] > 0 and sess["n_pages_train"] > 10 * sess["n_pages_test"]
    # fallback pages: a session's ratings in pages of 10; only a session's last page is shorter
    sizes = {int(k): v for k, v in sess["page_size_hist"].items()}
    assert max(sizes) == 10 and sizes[10] > sum(sizes.values()) / 2
    assert pages["passed"] and pages["tables"][0]["rows_quarantined"] == 0


def test_amazon_beauty_end_to_end(make_cfg, shared_data, tmp_path, spark):
    cfg = make_cfg("source.kind=amazon_beauty", f"source.path={shared_data / 'amazon-beauty'}",
                   "sessionize.split.mode=leave_one_out", "sessionize.sequence_pair_window=3")
    manifest, ev, sess, pages = _run_all(cfg, tmp_path, spark, "real-beauty")
    assert manifest["n_events"] == 198_502 and ev["passed"]
    assert sess["n_pages"] == 198_502  # a day between interactions: one page each
    assert sess["n_pages_test"] == sess["n_pages_valid"] == 22_363  # 5-core: every user has >= 3
    assert sess["n_pairs"] > 50_000  # from sequence windows: no session holds two purchases
    assert pages["passed"]
