"""Stage validate-events: canonical events and items -> validated events and items, quarantine, Data Docs.

Reads the ingest folder (events.parquet, items.parquet, manifest.json). Writes into `out_dir`:
events.parquet and items.parquet (rows that passed, canonical types), quarantine/ (rows that failed
a row-level check, with `quarantine_reason`), report.json, and the Great Expectations project gx/
whose Data Docs site is gx/uncommitted/data_docs/local_site/index.html. Stops with ValidationFailed
when a table-level expectation fails or more than validation.max_quarantine_fraction of a table
would be quarantined.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genrec import stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data.io import read_parquet
from genrec.data.schema import EVENTS_FILE, EVENTS_SCHEMA, ITEMS_FILE, ITEMS_SCHEMA, MANIFEST_FILE
from genrec.errors import InputDataError, ValidationFailed
from genrec.validation import checks as C
from genrec.validation.gate import gate_reasons
from genrec.validation.report import report_html, report_markdown
from genrec.validation.runner import GxProject, TableValidation, check_table, conform, quarantine_frame, to_frame

TEXT_COLUMNS = ("title", "description", "category", "brand", "image_path")


def _write(df: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df[[f.name for f in schema]], schema=schema, preserve_index=False), path)


def _write_quarantine(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df = df.copy()
    for col in df.columns:  # a quarantined row may hold anything; keep it readable
        if df[col].dtype == object:
            df[col] = df[col].map(lambda v: v if v is None or isinstance(v, str) else repr(v))
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def run_validate_events(cfg: PipelineConfig, ingest_dir: str | Path, out_dir: str | Path, pipeline_run_id: str) -> dict:
    """Validate events and items with Great Expectations; quarantine failing rows; stop if the gate fails."""
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
        project = GxProject(out_dir)

        items_raw = read_parquet(ingest_dir / ITEMS_FILE, "run the ingest stage first")
        items_rep = TableValidation("items", items_raw.num_rows)
        conformed = conform(items_raw, ITEMS_SCHEMA, f"{ITEMS_FILE}", TEXT_COLUMNS)
        items_tab, items_rep.schema_problems = conformed.table, conformed.problems
        clean_item_ids = pd.Series([], dtype="Int64")
        if items_tab is not None:
            items = to_frame(items_tab)
            items["text_utf8"] = conformed.utf8_ok
            items["numbers_finite"] = conformed.finite
            items["any_text"] = items[["title", "description", "category", "brand"]].bfill(axis=1).iloc[:, 0]
            item_checks = C.item_checks()
            bad = check_table(project, items, "items", item_checks, items_rep, pipeline_run_id)
            _write(items[~bad], ITEMS_SCHEMA, out_dir / ITEMS_FILE)
            _write_quarantine(quarantine_frame(items, bad, item_checks), out_dir / "quarantine" / ITEMS_FILE)
            clean_item_ids = items.loc[~bad, "item_id"]

        events_raw = read_parquet(ingest_dir / EVENTS_FILE, "run the ingest stage first")
        events_rep = TableValidation("events", events_raw.num_rows)
        conformed = conform(events_raw, EVENTS_SCHEMA, f"{EVENTS_FILE}")
        events_tab, events_rep.schema_problems = conformed.table, conformed.problems
        if events_tab is not None:
            v = cfg.validation
            events = C.add_event_columns(to_frame(events_tab), clean_item_ids.dropna().to_numpy(), conformed.finite,
                                         v.duplicate_key_columns)
            event_checks = C.event_checks(period[0], period[1], now, v.max_events_per_request, v.max_events_per_user_day)
            bad = check_table(project, events, "events", event_checks, events_rep, pipeline_run_id)
            _write(events[~bad], EVENTS_SCHEMA, out_dir / EVENTS_FILE)
            _write_quarantine(quarantine_frame(events, bad, event_checks), out_dir / "quarantine" / EVENTS_FILE)
        (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))

        track.dataset(ingest_dir / EVENTS_FILE, "events_raw", "input")
        track.dataset(ingest_dir / ITEMS_FILE, "items_raw", "input")
        if events_tab is not None and items_tab is not None:
            track.dataset(out_dir / EVENTS_FILE, "events_validated", "output", {f.name: str(f.type) for f in EVENTS_SCHEMA})
            track.dataset(out_dir / ITEMS_FILE, "items_validated", "output", {f.name: str(f.type) for f in ITEMS_SCHEMA})
        reports = [items_rep, events_rep]
        reasons = gate_reasons(reports, cfg.validation.max_quarantine_fraction, cfg.validation.max_automated_fraction)
        report = {"passed": not reasons, "reasons": reasons, "tables": [r.as_dict() for r in reports],
                  "data_docs": str(project.docs_path(stopped=bool(reasons)))}
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

