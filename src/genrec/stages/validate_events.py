"""Stage validate-events: canonical events and items -> validated events and items, quarantine, Data Docs.

Reads ingest's folder (manifest.json and its tables, by reference or in place) and validates on Spark
(`spark.master`; genrec.validation.runner), so memory does not grow with the log. Writes under the stage's data
folder events.parquet/ and items.parquet/ (rows that passed, canonical types) and quarantine/ (rows that failed a
row-level check, with `quarantine_reason`); into `out_dir` their references, manifest.json, report.json / .md /
.html and the Great Expectations project gx/ whose Data Docs site is gx/uncommitted/data_docs/local_site/index.html.
Stops with ValidationFailed when a table-level expectation fails or more than validation.max_quarantine_fraction of
a table would be quarantined.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from genrec import stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data import tables
from genrec.data.schema import EVENTS_FILE, EVENTS_SCHEMA, ITEMS_FILE, ITEMS_SCHEMA, MANIFEST_FILE
from genrec.errors import InputDataError, ValidationFailed
from genrec.validation import checks as C
from genrec.validation.conform import conform
from genrec.validation.gate import gate_reasons
from genrec.validation.report import report_html, report_markdown
from genrec.validation.runner import GxProject, TableValidation, validate_rows

TEXT_COLUMNS = ("title", "description", "category", "brand", "image_path")
HINT = "run the ingest stage first"


def _read(spark, raw_dir: Path, name: str, inputs: dict):
    """(Spark DataFrame, Arrow schema, row count) of one of ingest's tables; every part's footer is read first, so
    a damaged file fails here with its name. Its description goes into `inputs`."""
    uri = tables.locate(raw_dir, name, HINT)
    inputs[name] = tables.describe(uri, name)
    return spark.read.parquet(tables.spark_uri(uri)), tables.arrow_schema(uri), inputs[name].n_rows


def run_validate_events(cfg: PipelineConfig, ingest_dir: str | Path, out_dir: str | Path, pipeline_run_id: str,
                        spark=None) -> dict:
    """Validate events and items with Great Expectations on Spark; quarantine failing rows; stop if the gate fails.
    Runs on `spark` when given, else on this process's active SparkSession, else on one started (and stopped) here."""
    from genrec.spark.session import spark_session

    ingest_dir, out_dir = Path(ingest_dir), Path(out_dir)
    out_dir = stage_outputs.begin(out_dir, "validate-events", pipeline_run_id, {"raw": ingest_dir})
    with tracking.stage_run(cfg, "validate-events", pipeline_run_id) as track:
        track.params({"validation": cfg.validation.model_dump(mode="json")})
        manifest_path = ingest_dir / MANIFEST_FILE
        if not manifest_path.is_file():
            raise InputDataError(f"{manifest_path} not found: run the ingest stage first")
        manifest = json.loads(manifest_path.read_text())
        period = (datetime.fromisoformat(manifest["period_start"]), datetime.fromisoformat(manifest["period_end"]))
        now = datetime.now(timezone.utc) + timedelta(minutes=cfg.validation.future_tolerance_minutes)
        data = tables.fresh_data_dir(cfg, "validate-events", pipeline_run_id)
        project = GxProject(out_dir)
        inputs: dict = {}
        with spark_session(cfg.spark, "genrec-validate-events", spark) as session:
            reports, outputs = _validate(cfg, session, project, ingest_dir, data, period, now, inputs, pipeline_run_id)
        refs = {name: tables.record(out_dir, name, uri, written_by="validate-events") for name, uri in outputs.items()}
        (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))

        for name, label in ((EVENTS_FILE, "events_raw"), (ITEMS_FILE, "items_raw")):
            track.table(inputs[name], label, "input")
        for name, label in ((EVENTS_FILE, "events_validated"), (ITEMS_FILE, "items_validated")):
            if name in refs:
                track.table(refs[name], label, "output")
        reasons = gate_reasons(reports, cfg.validation.max_quarantine_fraction, cfg.validation.max_automated_fraction)
        report = {"passed": not reasons, "reasons": reasons, "tables": [r.as_dict() for r in reports],
                  "quarantine": {name: refs[f"quarantine/{name}"].uri for name in (ITEMS_FILE, EVENTS_FILE)
                                 if f"quarantine/{name}" in refs},
                  "data_docs": str(project.publish_docs(stopped=bool(reasons)))}
        (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (out_dir / "report.md").write_text(report_markdown("validate-events", report))
        (out_dir / "report.html").write_text(report_html("validate-events", report))
        _log(track, reports, project, report)
        track.artifact(out_dir / "report.html", "validation")  # the offline page; Data Docs need CDNs
        if reasons:
            raise ValidationFailed("validate-events stopped the pipeline:\n  " + "\n  ".join(reasons)
                                   + f"\nData Docs: {project.docs_index}")
    stage_outputs.complete(out_dir)
    return report


def _validate(cfg: PipelineConfig, spark, project: GxProject, ingest_dir: Path, data: str, period, now, inputs: dict,
              run_name: str) -> tuple[list[TableValidation], dict[str, str]]:
    """Both tables, items first (events are checked against the validated catalog); returns the reports and the
    URIs of what was written, by table name."""
    from pyspark.sql import functions as F

    outputs: dict[str, str] = {}
    items_df, items_schema, n_items = _read(spark, ingest_dir, ITEMS_FILE, inputs)
    items_rep = TableValidation("items", n_items)
    conformed = conform(items_df, items_schema, ITEMS_SCHEMA, ITEMS_FILE, TEXT_COLUMNS)
    items_rep.schema_problems = conformed.problems
    clean_items = spark.createDataFrame([], "item_id bigint")
    if conformed.df is not None:
        written = validate_rows(project, C.add_item_columns(conformed.df), "items", C.item_checks(), items_rep, data,
                                ITEMS_FILE, ITEMS_SCHEMA.names, run_name)
        outputs.update({ITEMS_FILE: written["clean"], f"quarantine/{ITEMS_FILE}": written["quarantine"]})
        clean_items = spark.read.parquet(tables.spark_uri(written["clean"])).select("item_id").where(
            F.col("item_id").isNotNull())

    events_df, events_schema, n_events = _read(spark, ingest_dir, EVENTS_FILE, inputs)
    events_rep = TableValidation("events", n_events)
    conformed = conform(events_df, events_schema, EVENTS_SCHEMA, EVENTS_FILE)
    events_rep.schema_problems = conformed.problems
    if conformed.df is not None:
        v = cfg.validation
        events = C.add_event_columns(conformed.df, clean_items, v.duplicate_key_columns, v.max_events_per_request,
                                     v.max_events_per_user_day)
        checks = C.event_checks(period[0], period[1], now, v.max_events_per_request, v.max_events_per_user_day)
        written = validate_rows(project, events, "events", checks, events_rep, data, EVENTS_FILE, EVENTS_SCHEMA.names,
                                run_name)
        outputs.update({EVENTS_FILE: written["clean"], f"quarantine/{EVENTS_FILE}": written["quarantine"]})
    return [items_rep, events_rep], outputs


def _log(track, reports: list[TableValidation], project: GxProject, report: dict) -> None:
    for rep in reports:
        track.metrics({f"{rep.table}_rows_in": rep.rows_in, f"{rep.table}_rows_out": rep.rows_out,
                       f"{rep.table}_rows_quarantined": rep.rows_quarantined})
        track.metrics({f"{rep.table}_quarantined_{k}": v for k, v in rep.quarantine_by_check.items()})
        if rep.rows_in:  # shares, so runs on logs of different sizes compare in the MLflow UI
            track.metrics({f"{rep.table}_share_{k}": v / rep.rows_in for k, v in rep.quarantine_by_check.items()})
        track.metrics({f"{rep.table}_rows_automated": rep.rows_automated})
        track.metrics({f"{rep.table}_failed_expectations": sum(not r.success for r in rep.results)})
    track.metrics({"validation_passed": int(report["passed"])})
    track.json(report, "validation/report.json")
    if project.docs_index.is_file():
        track.artifact(project.docs_index.parent, "data_docs")
        track.tag("genrec.data_docs", Path(report["data_docs"]).resolve().as_uri())
