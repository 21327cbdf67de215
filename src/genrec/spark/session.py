"""The SparkSession of the data stages (validate-events, sessionize, validate-pages), from the config's `spark`
section: local mode by default, a spark:// standalone cluster with the same code."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from genrec.config import SparkSettings


def build_spark(cfg: SparkSettings, app_name: str = "genrec"):
    """A SparkSession for the configured master, UTC throughout, no UI.

    Under spark-submit (which starts the JVM before Python runs) the master and driver memory given to spark-submit
    win; from plain Python they come from the config. An active session in this process is reused as it is (tests
    share one).
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # A standalone cluster's executors start Python workers with the driver's interpreter (same packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        builder = (builder.master(cfg.master).config("spark.driver.memory", cfg.driver_memory)
                   .config("spark.executor.memory", cfg.executor_memory))
    if cfg.local_dir:
        builder = builder.config("spark.local.dir", cfg.local_dir)
    return (builder
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")  # stage bars would flood the task's log
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            # Parquet written with nanosecond times (pandas, some exporters): read as numbers, converted by
            # genrec.validation.conform, instead of failing the read.
            .config("spark.sql.legacy.parquet.nanosAsLong", "true")
            # Joins and windows keyed by (user_id, ...) reuse a partitioning by user_id instead of shuffling the
            # month again (genrec.spark.sessionize).
            .config("spark.sql.requireAllClusterKeysForCoPartition", "false")
            .getOrCreate())


@contextmanager
def spark_session(cfg: SparkSettings, app_name: str, spark=None):
    """The session a stage runs on: `spark` when given, else this process's active one (both left running), else a
    new one from the config, stopped when the stage ends."""
    from pyspark.sql import SparkSession

    session = spark or SparkSession.getActiveSession()
    if session is not None:
        yield session
        return
    session = build_spark(cfg, app_name)
    try:
        yield session
    finally:
        session.stop()
