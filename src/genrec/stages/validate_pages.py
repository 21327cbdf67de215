"""Stage validate-pages: sessionized pages -> validated pages, quarantine, Data Docs.

Reads sessionized/pages (parquet partitioned by split). Writes into `out_dir`: pages/ (the pages that
passed, same layout), quarantine/pages.parquet, report.json and the GE project gx/ with its Data Docs.
Stops with ValidationFailed as validate-events does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec import stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data.io import read_pages
from genrec.errors import ValidationFailed
from genrec.validation import checks as C
from genrec.validation.gate import gate_reasons
from genrec.validation.report import report_html, report_markdown
from genrec.validation.runner import GxProject, TableValidation, check_table, quarantine_frame


def run_validate_pages(cfg: PipelineConfig, sessionized_dir: str | Path, out_dir: str | Path, pipeline_run_id: str) -> dict:
    """Validate pages with Great Expectations; quarantine failing pages; stop if the gate fails."""
    sessionized_dir, out_dir = Path(sessionized_dir), Path(out_dir)
    out_dir = stage_outputs.begin(out_dir, "validate-pages", pipeline_run_id, {"sessionized": sessionized_dir})
    with tracking.stage_run(cfg, "validate-pages", pipeline_run_id) as track:
        table = read_pages(sessionized_dir / "pages")
        frame = C.add_page_columns(table.to_pandas())
        checks = C.page_checks(cfg.validation.max_history_items)
        project = GxProject(out_dir)
        rep = TableValidation("pages", table.num_rows)
        bad = check_table(project, frame, "pages", checks, rep, pipeline_run_id)
        if (out_dir / "pages").exists():
            shutil.rmtree(out_dir / "pages")
        pq.write_to_dataset(table.filter(pa.array(~bad)), out_dir / "pages", partition_cols=["split"])
        quarantined = quarantine_frame(frame, bad, checks)
        (out_dir / "quarantine").mkdir(exist_ok=True)
        quarantined.to_parquet(out_dir / "quarantine" / "pages.parquet", index=False)
        if (sessionized_dir / "pairs").is_dir():  # pass the pairs through so the next stages read one folder
            shutil.copytree(sessionized_dir / "pairs", out_dir / "pairs", dirs_exist_ok=True)

        track.dataset(sessionized_dir / "pages", "pages_sessionized", "input")
        track.dataset(out_dir / "pages", "pages_validated", "output")
        reasons = gate_reasons([rep], cfg.validation.max_quarantine_fraction)
        splits = {s: int(n) for s, n in zip(*np.unique(frame.loc[~bad, "split"], return_counts=True))}
        report = {"passed": not reasons, "reasons": reasons, "tables": [rep.as_dict()], "pages_per_split": splits,
                  "data_docs": str(project.docs_path(stopped=bool(reasons)))}
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

