"""Stage sessionize: validated events -> sessions, training pages (train/test), co-engagement pairs.

The Spark work lives in genrec.spark.sessionize (spark-submit entry: spark_jobs/sessionize.py); this stage runs it
on the configured master (spark.master: local mode, or a spark:// cluster), or, with cluster.spark.mode=operator,
has the Kubeflow Spark operator run it (genrec.spark.on_kubernetes), and tracks it in MLflow. The events are read
where validate-events wrote them; pages/, sessions/ and pairs/ go to this stage's data folder, their references and
report.json to `out_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path

from genrec import plots, stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data import tables
from genrec.data.schema import EVENTS_FILE

# The tables this stage writes, with their hive partition columns.
OUTPUTS = {"pages": ("split",), "sessions": (), "pairs": ()}


def run_sessionize(cfg: PipelineConfig, validated_dir: str | Path, out_dir: str | Path, pipeline_run_id: str,
                   spark=None) -> dict:
    """Run the sessionization job on validate-events' events; write pages/, sessions/, pairs/ under the data root.

    Runs on `spark` when given, else on this process's active SparkSession, else on one started (and stopped) here.
    """
    from genrec.spark.sessionize import sessionize

    out_dir = stage_outputs.begin(out_dir, "sessionize", pipeline_run_id, {"validated": validated_dir})
    events = tables.locate(validated_dir, EVENTS_FILE, "run validate-events first")
    with tracking.stage_run(cfg, "sessionize", pipeline_run_id) as track:
        track.params({"sessionize": cfg.sessionize.model_dump(mode="json"), "spark": cfg.spark.model_dump(mode="json")})
        data = tables.fresh_data_dir(cfg, "sessionize", pipeline_run_id)
        if cfg.cluster.spark.mode == "operator":
            from genrec.spark.on_kubernetes import run_on_operator

            report = run_on_operator(cfg, events, data, pipeline_run_id)
        else:
            from genrec.spark.session import spark_session

            with spark_session(cfg.spark, "genrec-sessionize", spark) as session:
                report = sessionize(session, tables.spark_uri(events), tables.spark_uri(data), cfg.sessionize)
        refs = {name: tables.record(out_dir, name, tables.join(data, name), partitioning, "sessionize")
                for name, partitioning in OUTPUTS.items()}
        (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2))
        track.metrics({k: v for k, v in report.items() if isinstance(v, (int, float))})
        track.tag("genrec.spark_master", report["spark_master"])
        track.json(report, "sessionize/report.json")
        track.table(tables.describe(events, EVENTS_FILE), "events_validated", "input")
        track.table(refs["pages"], "pages", "output")
        for key, title, xlabel in (("page_size_hist", "Items per page", "items (capped at 50)"),
                                   ("history_len_hist", "History length per page", "items (capped at 200)")):
            hist = report[key]
            fig = plots.bar(list(hist), list(hist.values()), title, xlabel, "pages")
            track.figure(fig, f"plots/{key.removesuffix('_hist')}.png")
            plots.close(fig)
    stage_outputs.complete(out_dir)
    return report
