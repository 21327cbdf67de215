"""The bad-input corpus: every kind of broken log gets a clear outcome (a stop that names the problem, or
quarantined rows with counts), never a traceback, and rows in = rows out + rows quarantined."""

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from genrec.cli import app
from genrec.config import SimulatorConfig
from genrec.data.simulator import simulate
from genrec.errors import InputDataError, ValidationFailed
from genrec.stages.validate_events import run_validate_events

BASE = simulate(SimulatorConfig(n_users=60, n_items=100, days=5), seed=7, progress=False)
EVENTS = BASE.events.to_pandas()
ITEMS = BASE.items.to_pandas()
N = len(EVENTS)


def _nullable(df, col, rows, value=None):
    df = df.copy()
    df[col] = df[col].astype("Int64")
    df.loc[df.index[rows], col] = pd.NA if value is None else value
    return df


def _set(df, col, rows, value):
    df = df.copy()
    df.loc[df.index[rows], col] = value
    return df


def _two_users_in_request(ev, it):
    ev = ev.copy()
    req = ev["request_id"].iloc[0]
    first = ev.index[ev["request_id"] == req][0]
    ev.loc[first, "user_id"] = ev["user_id"].max() + 1
    return ev, it


def _rare_item(ev):
    counts = ev["item_id"].value_counts().reindex(ITEMS["item_id"], fill_value=0)
    return int(counts.idxmin()), int(counts.min())


def _non_utf8_title(ev, it):
    rare, _ = _rare_item(ev)
    titles = [t.encode() for t in it["title"]]
    titles[rare] = b"\xff\xfe broken \xc3"
    table = pa.Table.from_pandas(it, preserve_index=False)
    table = table.set_column(table.schema.get_field_index("title"), "title", pa.array(titles, pa.binary()))
    return ev, table


FUTURE = pd.Timestamp(datetime.now(timezone.utc) + timedelta(days=2))

# name -> (mutation, expected): ("stop", text in the message) or ("quarantine", {table: {check: rows}})
CASES = {
    "missing_column": (lambda e, i: (e.drop(columns=["ts"]), i), ("stop", "required column 'ts' is missing")),
    "wrong_type": (lambda e, i: (e.assign(user_id=e["user_id"].astype(str)), i), ("stop", "column 'user_id' has type string")),
    "fractional_ids": (lambda e, i: (e.assign(item_id=e["item_id"] + 0.5), i), ("stop", "'item_id' cannot be read as int64")),
    "null_user_ids": (lambda e, i: (_nullable(e, "user_id", [3, 50, 51]), i), ("quarantine", {"events": {"user_id_not_null": 3}})),
    "null_item_ids": (lambda e, i: (_nullable(e, "item_id", [7, 8]), i), ("quarantine", {"events": {"item_id_not_null": 2}})),
    "null_timestamps": (lambda e, i: (_set(e, "ts", [10, 11], pd.NaT), i), ("quarantine", {"events": {"ts_not_null": 2}})),
    "unknown_event_type": (lambda e, i: (_set(e, "event_type", [1, 2, 3, 4], "view"), i),
                           ("quarantine", {"events": {"event_type_known": 4}})),
    "duplicate_event_ids": (lambda e, i: (pd.concat([e, e.iloc[100:106]]), i), ("quarantine", {"events": {"event_id_unique": 6}})),
    "ts_outside_month": (lambda e, i: (_set(e, "ts", [20, 21, 22], pd.Timestamp("2025-01-01", tz="UTC")), i),
                         ("quarantine", {"events": {"ts_in_period": 3}})),
    "ts_in_future": (lambda e, i: (_set(e, "ts", [30, 31], FUTURE), i), ("quarantine", {"events": {"ts_not_future": 2}})),
    "unknown_items": (lambda e, i: (_set(e, "item_id", [40, 41, 42, 43], 999_999), i),
                      ("quarantine", {"events": {"item_in_catalog": 4}})),
    "negative_position": (lambda e, i: (_set(e, "position", [5], -1), i), ("quarantine", {"events": {"position_non_negative": 1}})),
    "negative_user_id": (lambda e, i: (e.assign(user_id=e["user_id"].where(e["user_id"] != e["user_id"].value_counts().idxmin(), -5)), i),
                         ("quarantine", {"events": {"user_id_non_negative": None}})),
    "request_with_two_users": (_two_users_in_request, ("quarantine", {"events": {"request_single_user": None}})),
    "empty_events": (lambda e, i: (e.iloc[:0], i), ("stop", "'not_empty'")),
    "too_many_bad_rows": (lambda e, i: (_set(e, "event_type", list(range(0, N, 5)), "view"), i),
                          ("stop", "fail row-level expectations ('event_type_known' on")),
    "clicks_without_exposure": (lambda e, i: (e[~((e.event_type == "expose") & (e.request_id % 3 == 0))], i),
                                ("stop", "'positive_has_exposure'")),
    "naive_timestamps": (lambda e, i: (e.assign(ts=e["ts"].dt.tz_localize(None)), i), ("quarantine", {"events": {}})),
    "items_missing_item_id": (lambda e, i: (e, i.drop(columns=["item_id"])), ("stop", "items.parquet: required column 'item_id'")),
    "non_utf8_title": (_non_utf8_title, ("quarantine", {"items": {"text_utf8": 1}})),
    "duplicate_item_ids": (lambda e, i: (e, pd.concat([i, i.iloc[[5]]])), ("quarantine", {"items": {"item_id_unique": 1}})),
    "negative_price": (lambda e, i: (e, _set(i, "price", [9], -3.0)), ("quarantine", {"items": {"price_non_negative": 1}})),
    "empty_catalog": (lambda e, i: (e, i.iloc[:0]), ("stop", "items: expectation 'not_empty'")),
    "items_without_text": (lambda e, i: (e, i.assign(title=None, description=None, category=None, brand=None)),
                           ("stop", "'has_text'")),
}


def _write_case(root, events, items):
    root.mkdir(parents=True)
    for name, obj in (("events.parquet", events), ("items.parquet", items)):
        table = obj if isinstance(obj, pa.Table) else pa.Table.from_pandas(obj, preserve_index=False)
        pq.write_table(table, root / name)
    (root / "manifest.json").write_text(json.dumps({"source": "test", "period_start": BASE.period_start.isoformat(),
                                                     "period_end": BASE.period_end.isoformat()}))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_corpus(case, make_cfg, tmp_path):
    mutate, (outcome, expected) = CASES[case]
    events, items = mutate(EVENTS.copy(), ITEMS.copy())
    _write_case(tmp_path / "in", events, items)
    cfg = make_cfg()
    out = tmp_path / "out"
    if outcome == "stop":
        with pytest.raises(ValidationFailed) as exc:
            run_validate_events(cfg, tmp_path / "in", out, f"bad-{case}")
        assert expected in str(exc.value), str(exc.value)
        assert "Data Docs:" in str(exc.value)
        report = json.loads((out / "report.json").read_text())
        assert not report["passed"] and report["reasons"]
        return
    report = run_validate_events(cfg, tmp_path / "in", out, f"bad-{case}")
    assert report["passed"], report["reasons"]
    tables = {t["table"]: t for t in report["tables"]}
    for table, by_check in expected.items():
        t = tables[table]
        for check, rows in by_check.items():  # rows None: any positive count (depends on the simulated log)
            got = t["quarantine_by_check"][check]
            assert got > 0 and (rows is None or got == rows), (check, got, rows)
        quarantined = pq.read_table(out / "quarantine" / f"{table}.parquet")
        clean = pq.read_table(out / f"{table}.parquet")
        assert t["rows_in"] == t["rows_out"] + t["rows_quarantined"] == clean.num_rows + quarantined.num_rows
        if by_check:
            reasons = quarantined.column("quarantine_reason").to_pylist()
            assert all(any(c in r for c in by_check) for r in reasons)
    if not any(expected.values()):  # nothing was wrong with the rows: nothing quarantined
        assert all(t["rows_quarantined"] == 0 for t in tables.values())


def test_unreadable_and_missing_files(make_cfg, tmp_path):
    cfg = make_cfg()
    _write_case(tmp_path / "in", EVENTS, ITEMS)
    (tmp_path / "in" / "events.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(InputDataError, match="events.parquet: not a readable parquet file"):
        run_validate_events(cfg, tmp_path / "in", tmp_path / "out", "bad-unreadable")
    (tmp_path / "in" / "manifest.json").unlink()
    with pytest.raises(InputDataError, match="manifest.json not found"):
        run_validate_events(cfg, tmp_path / "in", tmp_path / "out", "bad-manifest")


def test_cli_reports_without_traceback(make_cfg, tmp_path, mlflow_server):
    events = _set(EVENTS, "event_type", list(range(0, N, 3)), "view")
    _write_case(tmp_path / "in", events, ITEMS)
    result = CliRunner().invoke(app, ["validate-events", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                      f"run.work_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "error: validate-events stopped the pipeline" in result.output and "event_type_known" in result.output
    assert "Traceback" not in result.output


def test_quarantine_keeps_the_rows(make_cfg, tmp_path):
    events = _set(EVENTS, "event_type", [11, 12], "view")
    _write_case(tmp_path / "in", events, ITEMS)
    run_validate_events(make_cfg(), tmp_path / "in", tmp_path / "out", "bad-keep")
    q = pq.read_table(tmp_path / "out" / "quarantine" / "events.parquet").to_pandas()
    assert sorted(q["event_id"]) == sorted(EVENTS["event_id"].iloc[[11, 12]])
    assert set(q["event_type"]) == {"view"} and set(q["quarantine_reason"]) == {"event_type_known"}
    assert np.isin(EVENTS["event_id"].iloc[[11, 12]], pq.read_table(tmp_path / "out" / "events.parquet").column("event_id")).sum() == 0


def test_a_stage_whose_tracking_fails_mid_run_leaves_no_output_the_next_stage_accepts(make_cfg, tmp_path, monkeypatch):
    """The server goes away after the stage has started writing (here: its artifact uploads fail)."""
    from mlflow.exceptions import MlflowException

    from genrec import tracking
    from genrec import stage_outputs as outputs

    _write_case(tmp_path / "in", EVENTS, ITEMS)
    cfg = make_cfg()

    def gone(self, path, artifact_path=None):
        raise MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/x failed with "
                              "exception HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url "
                              "(Caused by NewConnectionError('Failed to establish a new connection: Connection refused'))")

    with monkeypatch.context() as m:
        m.setattr(tracking.StageTracker, "artifact", gone)
        with pytest.raises(tracking.TrackingError, match="lost the MLflow server at http"):
            run_validate_events(cfg, tmp_path / "in", tmp_path / "validated", "midrun")
    assert (tmp_path / "validated" / "events.parquet").exists()  # half-written: files are there ...
    assert (tmp_path / "validated" / outputs.MARKER).exists()  # ... and marked incomplete
    result = CliRunner().invoke(app, ["sessionize", "--input", str(tmp_path / "validated"), "--out",
                                      str(tmp_path / "sessionized"), f"run.work_dir={tmp_path}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is incomplete: validate-events started writing it (pipeline run midrun)" in result.output
    assert "rerun validate-events" in result.output
    # A rerun that finishes makes the folder usable again.
    run_validate_events(cfg, tmp_path / "in", tmp_path / "validated", "midrun-2")
    assert not (tmp_path / "validated" / outputs.MARKER).exists()
    outputs.require_complete(tmp_path / "validated", "validated")
