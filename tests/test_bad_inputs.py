"""The bad-input corpus (tests/bad_input_corpus.py): every kind of broken log gets a clear outcome (a stop that names
the problem, an error naming the file, or quarantined rows with counts), never a traceback, and rows in = rows out +
rows quarantined."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bad_input_corpus import BY_NAME, CASES, EVENTS, ITEMS, N, README, _set, readme_with_table, write_folder as _write_case
from genrec.cli import app
from genrec.data import tables as data
from genrec.errors import InputDataError, ValidationFailed
from genrec.stage_outputs import work_dir
from genrec.stages.ingest import run_ingest
from genrec.stages.validate_events import run_validate_events


@pytest.fixture(autouse=True)
def _shared_spark(spark):
    """validate-events runs on the active Spark session: the module shares one JVM instead of starting one per case."""


def test_the_corpus_covers_forty_kinds():
    assert len(CASES) >= 40 and len(BY_NAME) == len(CASES)


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_bad_input_corpus(name, make_cfg, tmp_path):
    case = BY_NAME[name]
    events, items = case.mutate(EVENTS.copy(), ITEMS.copy())
    raw = tmp_path / "in"
    if case.stage == "ingest":  # a canonical-parquet source; ingest writes the folder validate-events reads
        _write_case(tmp_path / "source", events, items, manifest=False)
        cfg = make_cfg("source.kind=parquet", f"source.path={tmp_path / 'source'}", *case.overrides)
    else:
        _write_case(raw, events, items)
        cfg = make_cfg(*case.overrides)
    if case.files:
        case.files(raw)
    out = tmp_path / "out"

    def run():
        if case.stage == "ingest":
            run_ingest(cfg, raw, f"bad-{name}-ingest")
        return run_validate_events(cfg, raw, out, f"bad-{name}")

    if case.outcome == "error":
        with pytest.raises(InputDataError) as exc:
            run()
        assert case.expected in str(exc.value), str(exc.value)
        return
    if case.outcome == "stop":
        with pytest.raises(ValidationFailed) as exc:
            run()
        assert case.expected in str(exc.value), str(exc.value)
        assert "Data Docs:" in str(exc.value)
        assert not out.exists()  # a stopped stage leaves no output; its report is in the work folder
        report = json.loads((work_dir(out) / "report.json").read_text())
        assert not report["passed"] and report["reasons"] and (work_dir(out) / "report.html").is_file()
        assert str(work_dir(out)) in str(exc.value)  # the message points where the Data Docs are
        return
    report = run()
    assert report["passed"], report["reasons"]
    tables = {t["table"]: t for t in report["tables"]}
    for t in tables.values():
        quarantined = pq.read_table(data.locate(out, f"quarantine/{t['table']}.parquet", ""))
        clean = pq.read_table(data.locate(out, f"{t['table']}.parquet", ""))
        assert t["rows_in"] == t["rows_out"] + t["rows_quarantined"] == clean.num_rows + quarantined.num_rows
    if case.outcome == "pass":  # nothing was wrong with the rows: nothing quarantined
        assert all(t["rows_quarantined"] == 0 for t in tables.values()), {k: t["quarantine_by_check"] for k, t in tables.items()}
        if case.verify:
            assert case.verify(pd.read_parquet(data.locate(out, "events.parquet", "")))
        return
    for table, by_check in case.expected.items():
        t = tables[table]
        for check, rows in by_check.items():  # rows None: any positive count (depends on the simulated log)
            got = t["quarantine_by_check"][check]
            assert got > 0 and (rows is None or got == rows), (check, got, rows)
        reasons = pq.read_table(data.locate(out, f"quarantine/{table}.parquet", "")).column("quarantine_reason").to_pylist()
        assert reasons and all(any(c in r for c in by_check) for r in reasons)


def test_automated_traffic_is_listed_by_user_and_gated_apart(make_cfg, tmp_path):
    """A bot's request is quarantined whole, its user named in the report; defects keep their own 1% budget."""
    events, items = BY_NAME["oversized_request"].mutate(EVENTS.copy(), ITEMS.copy())
    _write_case(tmp_path / "in", events, items)
    report = run_validate_events(make_cfg(), tmp_path / "in", tmp_path / "out", "bad-bot")
    events_rep = next(t for t in report["tables"] if t["table"] == "events")
    bot = int(EVENTS["user_id"].iloc[0])
    assert events_rep["rows_automated"] > 0.1 * events_rep["rows_in"] > 0.01 * events_rep["rows_in"]  # above 1%, passes
    assert events_rep["automated_users"][0]["user_id"] == bot and events_rep["automated_users"][0]["requests"] == 1
    assert f"| {bot} |" in (tmp_path / "out" / "report.md").read_text()
    quarantined = pd.read_parquet(data.locate(tmp_path / "out", "quarantine/events.parquet", ""))
    assert quarantined["request_id"].nunique() == 1 and set(quarantined["quarantine_reason"]) == {"request_oversized"}


def test_readme_lists_the_corpus():
    assert README.read_text() == readme_with_table(README.read_text()), "README's bad-input table is stale: make bad-inputs-doc"


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
    q = pq.read_table(data.locate(tmp_path / "out", "quarantine/events.parquet", "")).to_pandas()
    assert sorted(q["event_id"]) == sorted(EVENTS["event_id"].iloc[[11, 12]])
    assert set(q["event_type"]) == {"view"} and set(q["quarantine_reason"]) == {"event_type_known"}
    clean = pq.read_table(data.locate(tmp_path / "out", "events.parquet", "")).column("event_id")
    assert np.isin(EVENTS["event_id"].iloc[[11, 12]], clean).sum() == 0


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
    assert not (tmp_path / "validated").exists()  # no output folder ...
    assert (tmp_path / "validated.partial" / "events.parquet.ref.json").exists()  # ... its files are in the work
    assert (tmp_path / "validated.partial" / outputs.MARKER).exists()  # folder, marked incomplete
    result = CliRunner().invoke(app, ["sessionize", "--input", str(tmp_path / "validated"), "--out",
                                      str(tmp_path / "sessionized"), f"run.work_dir={tmp_path}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is incomplete: validate-events started writing it (pipeline run midrun)" in result.output
    assert "rerun validate-events" in result.output
    # A rerun that finishes makes the folder usable again.
    run_validate_events(cfg, tmp_path / "in", tmp_path / "validated", "midrun-2")
    assert not (tmp_path / "validated.partial").exists() and (tmp_path / "validated" / outputs.DONE).exists()
    outputs.require_complete(tmp_path / "validated", "validated")
