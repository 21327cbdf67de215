"""The Spark sessionization job on a hand-made log whose sessions, pages, histories and pairs are known."""

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.config import SessionizeConfig, SimulatorConfig, SplitConfig
from genrec.data.schema import EVENTS_SCHEMA
from genrec.data.simulator import simulate
from genrec.data.io import read_pages
from genrec.spark.sessionize import sessionize

pytestmark = pytest.mark.spark
T0 = datetime(2026, 10, 1, 10, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _events():
    rows = []

    def add(user, item, etype, t, request=None, pos=None):
        rows.append(dict(event_id=len(rows), user_id=user, item_id=item, event_type=etype, ts=t, request_id=request, position=pos))

    # user 1, day 1, session 0: three requests; the click on item 4 (page r101) comes after page r102 began
    for pos, item in enumerate([1, 2, 3]):
        add(1, item, "expose", at(0), 100, pos)
    add(1, 2, "click", at(5), 100, 1)
    add(1, 2, "cart", at(10), 100, 1)
    add(1, 2, "order", at(20), 100, 1)
    add(1, 4, "expose", at(60), 101, 0)
    add(1, 5, "expose", at(60), 101, 1)
    add(1, 6, "expose", at(120), 102, 0)
    add(1, 7, "expose", at(120), 102, 1)
    add(1, 6, "click", at(130), 102, 0)
    add(1, 4, "click", at(150), 101, 0)
    # user 1, 57 minutes later: a new session
    add(1, 8, "expose", at(3600), 103, 0)
    add(1, 8, "click", at(3605), 103, 0)
    # user 1, the next day: the test page
    add(1, 9, "expose", at(86400 + 60), 104, 0)
    add(1, 9, "click", at(86400 + 70), 104, 0)
    # user 2: no request ids; 12 ratings a minute apart, then one more after an hour
    for k in range(12):
        add(2, 20 + k, "click" if k % 2 else "expose", at(60 * k))
    add(2, 40, "order", at(60 * 11 + 3600))
    return pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA)


@pytest.fixture(scope="module")
def run_job(spark, tmp_path_factory):
    def _run(table, **cfg_kwargs):
        root = tmp_path_factory.mktemp("sess")
        pq.write_table(table, root / "events.parquet")
        cfg = SessionizeConfig(output_partitions=1, fallback_page_size=5, **cfg_kwargs)
        report = sessionize(spark, str(root / "events.parquet"), str(root / "out"), cfg)
        pages = read_pages(root / "out" / "pages").to_pandas().set_index("page_id")
        return report, pages, root / "out"
    return _run


@pytest.fixture(scope="module")
def handmade(run_job):
    return run_job(_events(), split=SplitConfig(valid_days=0))  # two days: one train, one test


def test_sessions_and_pages(handmade):
    report, pages, out = handmade
    sessions = pq.read_table(out / "sessions").to_pandas()
    assert sorted(sessions.groupby("user_id").size().items()) == [(1, 3), (2, 2)]
    assert {"r100", "r101", "r102", "r103", "r104"} <= set(pages.index)
    assert pages.loc["r100", "session_id"] == pages.loc["r102", "session_id"] != pages.loc["r103", "session_id"]
    # fallback rule: user 2's first session (12 events) is cut into pages of 5, 5 and 2 events
    fallback = pages[pages.user_id == 2].sort_values("page_start")
    assert fallback["n_events"].tolist() == [5, 5, 2, 1]
    assert report["n_pages"] == len(pages) == 9


def test_page_groups_by_intensity(handmade):
    _, pages, _ = handmade
    r100 = pages.loc["r100"]
    assert list(r100["ordered_items"]) == [2] and list(r100["exposed_items"]) == [1, 3]
    assert list(r100["clicked_items"]) == [] and list(r100["carted_items"]) == []
    assert list(pages.loc["r101", "clicked_items"]) == [4] and list(pages.loc["r101", "exposed_items"]) == [5]


def test_history_has_no_leakage(handmade):
    _, pages, _ = handmade
    assert list(pages.loc["r100", "history_items"]) == []
    assert list(pages.loc["r101", "history_items"]) == [2]
    # item 4 was clicked (on page r101) after page r102 had begun: not in r102's history
    assert list(pages.loc["r102", "history_items"]) == [2]
    assert list(pages.loc["r103", "history_items"]) == [2, 6, 4]
    assert list(pages.loc["r103", "history_intensity"]) == [3, 1, 1]
    for _, page in pages.iterrows():
        assert all(pd.Timestamp(t, tz="UTC") < page["page_start"] for t in page["history_ts"])


def test_history_truncated_to_most_recent(run_job):
    _, pages, _ = run_job(_events(), max_history=2)
    assert list(pages.loc["r103", "history_items"]) == [6, 4]


def test_last_day_split_and_unseen(handmade):
    report, pages, _ = handmade
    assert pages.loc["r104", "split"] == "test"
    assert (pages.drop(index="r104")["split"] == "train").all()
    assert report["n_pages_test"] == 1 and report["n_test_users_unseen"] == 0
    assert report["n_test_target_items"] == 1 and report["n_test_target_items_unseen"] == 1  # item 9 is new


def test_validation_days_come_before_the_test_days(run_job):
    report, pages, _ = run_job(_events(), split=SplitConfig(test_days=1, valid_days=1))
    assert pages.loc["r104", "split"] == "test"
    assert (pages.drop(index="r104")["split"] == "valid").all()  # day one is now validation; nothing is train
    assert report["n_pages_valid"] == len(pages) - 1


def test_leave_one_out_split(run_job):
    _, pages, _ = run_job(_events(), split=SplitConfig(mode="leave_one_out"))
    user1 = pages[pages.user_id == 1].sort_values("page_start")
    assert user1["split"].tolist() == ["train", "train", "train", "valid", "test"]


def test_coengagement_pairs_from_train_sessions(handmade):
    _, _, out = handmade
    pairs = pq.read_table(out / "pairs").to_pandas()
    got = {(a, b): n for a, b, n in pairs[["item_a", "item_b", "n_sessions"]].itertuples(index=False)}
    assert got[(2, 4)] == got[(2, 6)] == got[(4, 6)] == 1
    assert all(a < b for a, b in got)
    assert not any(9 in p for p in got)  # item 9 only appears on the test day
    assert (21, 23) in got  # user 2's clicks in one session


def test_deterministic_and_leak_free_on_simulated_logs(run_job):
    logs = simulate(SimulatorConfig(n_users=80, n_items=150, days=6), seed=5, progress=False)
    r1, p1, _ = run_job(logs.events, max_history=30)
    r2, p2, _ = run_job(logs.events, max_history=30)
    assert p1.sort_index().drop(columns=[]).equals(p2.sort_index())
    for _, page in p1.iterrows():
        ts = [pd.Timestamp(t, tz="UTC") for t in page["history_ts"]]
        assert len(ts) <= 30 and all(t < page["page_start"] for t in ts) and ts == sorted(ts)
    assert r1["n_pages"] == logs.events.to_pandas()["request_id"].nunique()


def test_runs_under_spark_submit(tmp_path):
    logs = simulate(SimulatorConfig(n_users=40, n_items=80, days=3), seed=2, progress=False)
    pq.write_table(logs.events, tmp_path / "events.parquet")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    proc = subprocess.run([str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]", "--driver-memory", "1g",
                           str(repo / "spark_jobs" / "sessionize.py"), "--events", str(tmp_path / "events.parquet"),
                           "--out", str(tmp_path / "out"), "spark.shuffle_partitions=2", "sessionize.split.test_days=2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next((tmp_path / "out" / "_report").glob("part-*")).read_text())
    assert report["n_pages"] == len(set(logs.events.column("request_id").to_pylist()))
    assert report["n_pages_test"] > 0 and json.loads(proc.stdout)["n_pages"] == report["n_pages"]
    assert report["spark_master"] == "local[1]"  # spark-submit's --master wins over the config's local[*]


def test_sequence_pairs_for_sources_without_sessions(run_job):
    # user 3 buys items 50, 51, 52 a day apart (one session each), item 53 on the validation day and item 54 on
    # the test day
    rows = [dict(event_id=i, user_id=3, item_id=50 + i, event_type="order", ts=T0 + timedelta(days=i), request_id=None,
                 position=None) for i in range(5)]
    table = pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA)
    _, _, out = run_job(table)
    assert pq.read_table(out / "pairs").num_rows == 0  # no session holds two items
    _, _, out = run_job(table, sequence_pair_window=2)
    got = {(a, b) for a, b in pq.read_table(out / "pairs").to_pandas()[["item_a", "item_b"]].itertuples(index=False)}
    assert got == {(50, 51), (50, 52), (51, 52)}  # items 53 (validation) and 54 (test) are never paired
