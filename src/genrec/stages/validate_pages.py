"""Stage validate-pages: sessionized pages -> validated pages, quarantine, Data Docs.

Reads sessionize's pages where they are and validates them on Spark (spark.master), as validate-events does. Writes
under the stage's data folder pages/ (the pages that passed, partitioned by split) and quarantine/pages/; into
`out_dir` their references, the pairs' reference passed on unchanged (the pairs are not copied), report.json / .md /
.html and the GE project gx/ with its Data Docs. Stops with ValidationFailed as validate-events does.
"""

from __future__ import annotations

import json
from pathlib import Path

from genrec import stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data import tables
from genrec.errors import ValidationFailed
from genrec.validation import checks as C
from genrec.validation.gate import gate_reasons
from genrec.validation.report import report_html, report_markdown
from genrec.validation.runner import GxProject, TableValidation, validate_rows

PAGE_COLUMNS = ("page_id", "user_id", "session_id", "page_start", "n_events", "history_items", "history_ts",
                "history_intensity", *C.PAGE_GROUPS)


def run_validate_pages(cfg: PipelineConfig, sessionized_dir: str | Path, out_dir: str | Path, pipeline_run_id: str,
                       spark=None) -> dict:
    """Validate pages on Spark; quarantine failing pages; stop if the gate fails. Runs on `spark` when given, else
    on this process's active SparkSession, else on one started (and stopped) here."""
    from pyspark.sql import functions as F

    from genrec.spark.session import spark_session

    sessionized_dir, out_dir = Path(sessionized_dir), Path(out_dir)
    out_dir = stage_outputs.begin(out_dir, "validate-pages", pipeline_run_id, {"sessionized": sessionized_dir})
    with tracking.stage_run(cfg, "validate-pages", pipeline_run_id) as track:
        pages_uri = tables.locate(sessionized_dir, "pages", "run sessionize first")
        pages_in = tables.describe(pages_uri, "pages", ("split",))
        data = tables.fresh_data_dir(cfg, "validate-pages", pipeline_run_id)
        project = GxProject(out_dir)
        rep = TableValidation("pages", pages_in.n_rows)
        with spark_session(cfg.spark, "genrec-validate-pages", spark) as session:
            pages = session.read.parquet(tables.spark_uri(pages_uri)).withColumn("split", F.col("split").cast("string"))
            columns = [c for c in PAGE_COLUMNS if c in pages.columns] + ["split"]
            written = validate_rows(project, C.add_page_columns(pages), "pages",
                                    C.page_checks(cfg.validation.max_history_items), rep, data, "pages", columns,
                                    pipeline_run_id, partition_by=("split",))
        refs = {"pages": tables.record(out_dir, "pages", written["clean"], ("split",), "validate-pages"),
                "quarantine/pages": tables.record(out_dir, "quarantine/pages", written["quarantine"],
                                                  written_by="validate-pages")}
        if tables.exists(sessionized_dir, "pairs"):  # the stages after this one find every table here
            tables.forward(sessionized_dir, out_dir, "pairs")

        track.table(pages_in, "pages_sessionized", "input")
        track.table(refs["pages"], "pages_validated", "output")
        reasons = gate_reasons([rep], cfg.validation.max_quarantine_fraction)
        splits = {key.split("=", 1)[1]: n for key, n in sorted(refs["pages"].rows_by_partition.items())}
        report = {"passed": not reasons, "reasons": reasons, "tables": [rep.as_dict()], "pages_per_split": splits,
                  "quarantine": {"pages": refs["quarantine/pages"].uri},
                  "data_docs": str(project.publish_docs(stopped=bool(reasons)))}
        (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (out_dir / "report.md").write_text(report_markdown("validate-pages", report))
        (out_dir / "report.html").write_text(report_html("validate-pages", report))
        track.metrics({"pages_rows_in": rep.rows_in, "pages_rows_out": rep.rows_out,
                       "pages_rows_quarantined": rep.rows_quarantined, "validation_passed": int(not reasons),
                       "pages_failed_expectations": sum(not r.success for r in rep.results)})
        track.metrics({f"pages_quarantined_{k}": v for k, v in rep.quarantine_by_check.items()})
        track.json(report, "validation/report.json")
        track.artifact(out_dir / "report.html", "validation")  # the offline page; Data Docs need CDNs
        if project.docs_index.is_file():
            track.artifact(project.docs_index.parent, "data_docs")
            track.tag("genrec.data_docs", Path(report["data_docs"]).resolve().as_uri())
        if reasons:
            raise ValidationFailed("validate-pages stopped the pipeline:\n  " + "\n  ".join(reasons)
                                   + f"\nData Docs: {project.docs_index}")
    stage_outputs.complete(out_dir)
    return report
