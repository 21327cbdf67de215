"""Stage sessionize: validated events -> sessions, training pages (train/test), co-engagement pairs.

The Spark work lives in genrec.spark.sessionize (spark-submit entry: spark_jobs/sessionize.py); this stage
starts Spark for the configured master (or, with cluster.spark.mode=operator, has the Kubeflow Spark operator run
the job: genrec.spark.on_kubernetes), and tracks it in MLflow.
"""

from __future__ import annotations

from pathlib import Path

from genrec import plots, stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data.schema import EVENTS_FILE
from genrec.errors import InputDataError


def run_sessionize(cfg: PipelineConfig, validated_dir: str | Path, out_dir: str | Path, pipeline_run_id: str,
                   spark=None) -> dict:
    """Run the sessionization job on validated_dir/events.parquet; write pages/, sessions/, pairs/ to out_dir.

    Pass an existing SparkSession to reuse it (tests do); otherwise one is started and stopped here.
    """
    from genrec.spark.sessionize import build_spark, sessionize

    out_dir = stage_outputs.begin(out_dir, "sessionize", pipeline_run_id, {"validated": validated_dir})
    events = Path(validated_dir) / EVENTS_FILE
    if not events.exists():
        raise InputDataError(f"{events} not found: run validate-events first")
    with tracking.stage_run(cfg, "sessionize", pipeline_run_id) as track:
        track.params({"sessionize": cfg.sessionize.model_dump(mode="json")})
        if cfg.cluster.spark.mode == "operator":
            from genrec.spark.on_kubernetes import run_on_operator

            report = run_on_operator(cfg, events, Path(out_dir), pipeline_run_id)
        else:
            own = spark is None
            spark = spark or build_spark(cfg.sessionize)
            try:
                report = sessionize(spark, str(events), str(out_dir), cfg.sessionize)
            finally:
                if own:
                    spark.stop()
        track.metrics({k: v for k, v in report.items() if isinstance(v, (int, float))})
        track.tag("genrec.spark_master", report["spark_master"])
        track.json(report, "sessionize/report.json")
        track.dataset(events, "events_validated", "input")
        track.dataset(Path(out_dir) / "pages", "pages", "output")
        for key, title, xlabel in (("page_size_hist", "Items per page", "items (capped at 50)"),
                                   ("history_len_hist", "History length per page", "items (capped at 200)")):
            hist = report[key]
            fig = plots.bar(list(hist), list(hist.values()), title, xlabel, "pages")
            track.figure(fig, f"plots/{key.removesuffix('_hist')}.png")
            plots.close(fig)
    stage_outputs.complete(out_dir)
    return report
