"""validate-pages on broken pages: leakage, empty pages, duplicates, unknown split, long or unsorted histories."""

from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.config import SessionizeConfig, SimulatorConfig
from genrec.data.simulator import simulate
from genrec.errors import ValidationFailed
from genrec.data import tables
from genrec.data.io import read_pages
from genrec.stages.validate_pages import run_validate_pages
from genrec.spark.sessionize import sessionize

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def good_pages(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    logs = simulate(SimulatorConfig(n_users=100, n_items=200, days=6), seed=11, progress=False)
    pq.write_table(logs.events, root / "events.parquet")
    sessionize(spark, str(root / "events.parquet"), str(root / "out"), SessionizeConfig(output_partitions=1))
    return read_pages(root / "out" / "pages").to_pandas()


def _leak(p):
    p = p.copy()
    rows = p.index[p["history_items"].map(len) > 0][:3]
    for r in rows:
        ts = list(p.at[r, "history_ts"])
        ts[-1] = (p.at[r, "page_start"] + timedelta(minutes=5)).tz_localize(None).to_datetime64()
        p.at[r, "history_ts"] = ts
    return p, len(rows)


def _empty(p):
    p = p.copy()
    for g in ("ordered_items", "carted_items", "clicked_items", "exposed_items"):
        p.at[p.index[0], g] = []
    return p, 1


def _unsorted(p):
    p = p.copy()
    r = p.index[p["history_items"].map(len) > 2][0]
    p.at[r, "history_ts"] = list(reversed(list(p.at[r, "history_ts"])))
    return p, 1


CASES = {
    "history_after_page_start": (_leak, "history_before_page"),
    "empty_page": (_empty, "target_not_empty"),
    "duplicate_page_id": (lambda p: (pd.concat([p, p.iloc[[4]]]), 1), "page_id_unique"),
    "unknown_split": (lambda p: (p.assign(split=p["split"].where(p.index != p.index[2], "holdout")), 1), "split_known"),
    "unsorted_history": (_unsorted, "history_chronological"),
}


def _write(pages: pd.DataFrame, root):
    pq.write_to_dataset(pa.Table.from_pandas(pages, preserve_index=False), root / "pages", partition_cols=["split"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_pages_are_quarantined(case, good_pages, make_cfg, tmp_path):
    mutate, check = CASES[case]
    pages, n_bad = mutate(good_pages.reset_index(drop=True))
    _write(pages, tmp_path / "in")
    report = run_validate_pages(make_cfg(), tmp_path / "in", tmp_path / "out", f"pages-{case}")
    t = report["tables"][0]
    assert report["passed"] and t["quarantine_by_check"][check] == n_bad
    assert t["rows_in"] == len(pages) == t["rows_out"] + t["rows_quarantined"]
    q = pq.read_table(tables.locate(tmp_path / "out", "quarantine/pages", "")).to_pandas()
    assert len(q) == t["rows_quarantined"] and all(check in r for r in q["quarantine_reason"])
    assert read_pages(tables.locate(tmp_path / "out", "pages", "")).num_rows == t["rows_out"]


def test_too_long_history_stops(good_pages, make_cfg, tmp_path):
    _write(good_pages, tmp_path / "in")
    longest = int(good_pages["history_items"].map(len).max())
    with pytest.raises(ValidationFailed, match="history_length"):
        run_validate_pages(make_cfg(f"validation.max_history_items={max(1, longest // 4)}"), tmp_path / "in", tmp_path / "out", "pages-long")


def test_clean_pages_pass_untouched(good_pages, make_cfg, tmp_path):
    _write(good_pages, tmp_path / "in")
    report = run_validate_pages(make_cfg(), tmp_path / "in", tmp_path / "out", "pages-clean")
    assert report["passed"] and report["tables"][0]["rows_quarantined"] == 0
    assert sum(report["pages_per_split"].values()) == len(good_pages)
