"""Sessionization: a month of canonical events -> sessions, training pages, split, co-engagement pairs.

The job's logic, in the library so that the sessionize stage runs it in-process. Call
`sessionize(spark, ...)` from Python, or run it on any Spark master through its spark-submit entry:

    spark-submit spark_jobs/sessionize.py --events work/validated/events.parquet --out work/sessionized \
        [--config configs/demo.yaml] [sessionize.session_gap_minutes=20 ...]

Rules (all deterministic; ties are broken by event_id):
- Sessions: a user's events in time order; a gap longer than `session_gap_minutes` starts a new one.
- Pages: one per feed request (`request_id`). Events without a request id (sources with no feed,
  e.g. MovieLens) are cut, per session and in time order, into pages of `fallback_page_size` events.
- A page's items are grouped by their most intense event in the page: ordered, carted, clicked,
  exposed-only; within a group by position, then time.
- History of a page: the user's positive interactions (click, cart, order; one per page and item,
  at the time of its first positive event) that happened strictly before the page's first event,
  chronological, the last `max_history` kept. Nothing from the page itself or later.
- Split: `last_days` (pages starting on the last `test_days` days are test, the `valid_days` before them
  validation) or `leave_one_out`
  (per user with >= 3 pages: last page test, second last valid).
- Co-engagement pairs: distinct items with a positive event in the same session, from train pages
  only (no leakage into the embedding stage), counted over sessions; optionally (sequence_pair_window)
  also each positive interaction with the user's next few, for sources without real sessions.

Outputs under --out: pages/ (parquet, partitioned by split), sessions/, pairs/, report.json. --out and --events may
be URIs (s3a://bucket/..., file:///...) when the job runs on a cluster; the report then goes to _report/ (a one-line
text dataset), since only Spark can write there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from genrec.config import SessionizeConfig
from genrec.data.schema import INTENSITY



def intensity(col: str = "event_type"):
    """order 3 > cart 2 > click 1 > expose 0, from genrec's schema (a function: columns need a SparkContext)."""
    expr = F.lit(0)
    for name, rank in INTENSITY.items():
        expr = F.when(F.col(col) == name, rank).otherwise(expr)
    return expr

# Where the report goes when the output is a URI: a text dataset of one JSON line.
REMOTE_REPORT = "_report"

GROUPS = {3: "ordered_items", 2: "carted_items", 1: "clicked_items", 0: "exposed_items"}


def build_spark(cfg: SessionizeConfig, app_name: str = "genrec-sessionize") -> SparkSession:
    """A SparkSession for the configured master, UTC throughout, no UI.

    Under spark-submit (which starts the JVM before Python runs) the master and driver memory given to
    spark-submit win; from plain Python they come from the config.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        builder = builder.master(cfg.master).config("spark.driver.memory", cfg.driver_memory)
    return (builder
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
            .config("spark.ui.enabled", "false")
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            .getOrCreate())


def assign_sessions(events: DataFrame, gap_minutes: float) -> DataFrame:
    """Add session_idx and session_id: a new session after `gap_minutes` of inactivity."""
    w = Window.partitionBy("user_id").orderBy("ts", "event_id")
    gap_s = F.col("ts").cast("double") - F.lag(F.col("ts").cast("double")).over(w)
    new = F.when(gap_s.isNull() | (gap_s > gap_minutes * 60.0), 1).otherwise(0)
    ev = events.withColumn("new_session", new)
    ev = ev.withColumn("session_idx", F.sum("new_session").over(w.rowsBetween(Window.unboundedPreceding, 0)) - 1)
    return ev.withColumn("session_id", F.concat_ws("-", F.lit("u"), F.col("user_id"), F.lit("s"), F.col("session_idx")))


def assign_pages(ev: DataFrame, fallback_page_size: int) -> DataFrame:
    """Add page_id: the request id, or the fallback rule for events without one."""
    w = Window.partitionBy("user_id", "session_idx").orderBy("ts", "event_id")
    chunk = F.floor((F.row_number().over(w) - 1) / fallback_page_size)
    fallback = F.concat_ws("-", F.lit("u"), F.col("user_id"), F.lit("s"), F.col("session_idx"), F.lit("p"), chunk)
    return ev.withColumn("page_id", F.when(F.col("request_id").isNotNull(),
                                           F.concat(F.lit("r"), F.col("request_id").cast("string"))).otherwise(fallback))


def build_pages(ev: DataFrame, max_history: int) -> DataFrame:
    """One row per page: its user, session, start, grouped items and history."""
    ev = ev.withColumn("intensity", intensity())
    pages = ev.groupBy("page_id").agg(
        F.min("user_id").alias("user_id"),
        F.min("ts").alias("page_start"),
        F.min_by("session_id", F.struct("ts", "event_id")).alias("session_id"),
        F.count("*").alias("n_events"),
    )
    per_item = ev.groupBy("page_id", "user_id", "item_id").agg(
        F.max("intensity").alias("intensity"),
        F.min(F.coalesce("position", F.lit(1 << 30))).alias("pos"),
        F.min("ts").alias("first_ts"),
        F.min(F.when(F.col("intensity") > 0, F.col("ts"))).alias("pos_ts"),
    )
    grouped = per_item.groupBy("page_id").agg(*[
        F.transform(F.array_sort(F.collect_list(F.when(F.col("intensity") == k, F.struct("pos", "first_ts", "item_id")))),
                    lambda s: s["item_id"]).alias(name)
        for k, name in GROUPS.items()
    ])
    positives = per_item.where(F.col("intensity") > 0)
    user_hist = positives.groupBy("user_id").agg(
        F.array_sort(F.collect_list(F.struct(F.col("pos_ts").alias("ts"), "item_id", "intensity", "page_id"))).alias("events"))
    pages = pages.join(grouped, "page_id").join(user_hist, "user_id", "left")
    before = F.filter(F.coalesce("events", F.array()), lambda x: x["ts"] < F.col("page_start"))
    pages = pages.withColumn("hist", before)
    start = F.greatest(F.size("hist") - F.lit(max_history) + 1, F.lit(1))
    pages = pages.withColumn("hist", F.slice("hist", start, F.lit(max_history)))
    return pages.select(
        "page_id", "user_id", "session_id", "page_start", "n_events",
        F.transform("hist", lambda x: x["item_id"]).alias("history_items"),
        F.transform("hist", lambda x: x["ts"]).alias("history_ts"),
        F.transform("hist", lambda x: x["intensity"]).alias("history_intensity"),
        *GROUPS.values(),
    )


def assign_split(pages: DataFrame, mode: str, test_days: int, valid_days: int = 0) -> DataFrame:
    """Add split: train / valid / test."""
    if mode == "last_days":
        last_day = pages.agg(F.max(F.to_date("page_start")).alias("d")).collect()[0]["d"]
        test_from = F.date_sub(F.lit(last_day), test_days - 1)
        valid_from = F.date_sub(F.lit(last_day), test_days + valid_days - 1)
        day = F.to_date("page_start")
        return pages.withColumn("split", F.when(day >= test_from, "test").when(day >= valid_from, "valid")
                                .otherwise("train"))
    w = Window.partitionBy("user_id").orderBy(F.col("page_start").desc(), F.col("page_id").desc())
    n = F.count("*").over(Window.partitionBy("user_id"))
    rank = F.row_number().over(w)
    return pages.withColumn("split", F.when((n >= 3) & (rank == 1), "test").when((n >= 3) & (rank == 2), "valid")
                            .otherwise("train"))


def coengagement_pairs(ev: DataFrame, pages: DataFrame, max_items: int, sequence_window: int = 0) -> DataFrame:
    """(item_a, item_b, n_sessions), a < b: items with a positive event in the same train session, counted over
    sessions. With sequence_window > 0 also each positive interaction of a user with the next `sequence_window`
    ones (train pages only), each such window counting as one more session: the rule for sources whose
    sessions hold a single interaction (Amazon Beauty)."""
    train_pages = pages.where(F.col("split") == "train").select("page_id")
    positives = ev.where(F.col("event_type") != "expose").join(train_pages, "page_id")
    pos = positives.groupBy("session_id", "item_id").agg(F.min("ts").alias("t"))
    w = Window.partitionBy("session_id").orderBy("t", "item_id")
    pos = pos.withColumn("k", F.row_number().over(w)).where(F.col("k") <= max_items).select("session_id", "item_id")
    a, b = pos.alias("a"), pos.alias("b")
    pairs = a.join(b, (F.col("a.session_id") == F.col("b.session_id")) & (F.col("a.item_id") < F.col("b.item_id")))
    pairs = pairs.select(F.col("a.item_id").alias("item_a"), F.col("b.item_id").alias("item_b"))
    if sequence_window > 0:
        seq = positives.groupBy("user_id", "item_id").agg(F.min("ts").alias("t"))
        seq = seq.withColumn("k", F.row_number().over(Window.partitionBy("user_id").orderBy("t", "item_id")))
        a, b = seq.alias("a"), seq.alias("b")
        near = a.join(b, (F.col("a.user_id") == F.col("b.user_id")) & (F.col("b.k") > F.col("a.k"))
                      & (F.col("b.k") <= F.col("a.k") + sequence_window))
        pairs = pairs.unionByName(near.select(F.least("a.item_id", "b.item_id").alias("item_a"),
                                              F.greatest("a.item_id", "b.item_id").alias("item_b")))
    return pairs.groupBy("item_a", "item_b").agg(F.count("*").alias("n_sessions"))


def _histogram(df: DataFrame, col: str, cap: int) -> dict[int, int]:
    rows = df.select(F.least(F.col(col), F.lit(cap)).alias("v")).groupBy("v").count().collect()
    return {int(r["v"]): int(r["count"]) for r in sorted(rows, key=lambda r: r["v"])}


def is_uri(path: str) -> bool:
    """An s3a://, file://, hdfs:// ... location rather than a local path."""
    return "://" in str(path)


def _at(out_dir: str, name: str) -> str:
    # Path() would fold s3a://bucket into s3a:/bucket
    return f"{str(out_dir).rstrip('/')}/{name}"


def sessionize(spark: SparkSession, events_path: str, out_dir: str, cfg: SessionizeConfig) -> dict:
    """Run the job; returns the report (also written to out_dir/report.json, or out_dir/_report/ for a URI)."""
    t0 = time.time()
    events = spark.read.parquet(str(events_path))
    ev = assign_pages(assign_sessions(events, cfg.session_gap_minutes), cfg.fallback_page_size).cache()
    pages = assign_split(build_pages(ev, cfg.max_history), cfg.split.mode, cfg.split.test_days,
                         cfg.split.valid_days).cache()
    pages.repartition(cfg.output_partitions, "split").write.mode("overwrite").partitionBy("split").parquet(
        _at(out_dir, "pages"))

    sessions = ev.groupBy("session_id").agg(
        F.min("user_id").alias("user_id"), F.min("ts").alias("session_start"), F.max("ts").alias("session_end"),
        F.count("*").alias("n_events"), F.countDistinct("page_id").alias("n_pages"))
    sessions.write.mode("overwrite").parquet(_at(out_dir, "sessions"))
    pairs = coengagement_pairs(ev, pages, cfg.max_items_per_session_for_pairs, cfg.sequence_pair_window)
    pairs.write.mode("overwrite").parquet(_at(out_dir, "pairs"))

    report = _report(spark, ev, pages, out_dir)
    report["duration_s"] = round(time.time() - t0, 2)
    report["spark_master"] = spark.sparkContext.master
    text = json.dumps(report, indent=2)
    if is_uri(out_dir):
        spark.createDataFrame([(json.dumps(report),)], ["report"]).coalesce(1).write.mode("overwrite").text(
            _at(out_dir, REMOTE_REPORT))
    else:
        (Path(out_dir) / "report.json").write_text(text)
    ev.unpersist()
    pages.unpersist()
    return report


def _report(spark: SparkSession, ev: DataFrame, pages: DataFrame, out: str) -> dict:
    counts = {r["split"]: int(r["count"]) for r in pages.groupBy("split").count().collect()}
    train = pages.where(F.col("split") == "train")
    test = pages.where(F.col("split") == "test")
    train_users = train.select("user_id").distinct()
    train_items = train.select(F.explode(F.concat(*GROUPS.values(), "history_items")).alias("item_id")).distinct()
    test_items = test.select(F.explode(F.concat("ordered_items", "carted_items", "clicked_items")).alias("item_id")).distinct()
    sizes = pages.select((F.size("ordered_items") + F.size("carted_items") + F.size("clicked_items")
                          + F.size("exposed_items")).alias("page_size"), F.size("history_items").alias("history_len"))
    stats = sizes.agg(F.avg("page_size").alias("ps"), F.avg("history_len").alias("hl")).collect()[0]
    pairs = spark.read.parquet(_at(out, "pairs"))
    return {
        "n_events": ev.count(),
        "n_sessions": spark.read.parquet(_at(out, "sessions")).count(),
        "n_pages": sum(counts.values()),
        **{f"n_pages_{k}": counts.get(k, 0) for k in ("train", "valid", "test")},
        "n_test_users": test.select("user_id").distinct().count(),
        "n_test_users_unseen": test.select("user_id").distinct().join(train_users, "user_id", "left_anti").count(),
        "n_test_target_items": test_items.count(),
        "n_test_target_items_unseen": test_items.join(train_items, "item_id", "left_anti").count(),
        "n_pairs": pairs.count(),
        "mean_page_size": float(stats["ps"] or 0),
        "mean_history_len": float(stats["hl"] or 0),
        "page_size_hist": _histogram(sizes, "page_size", 50),
        "history_len_hist": _histogram(sizes, "history_len", 200),
    }
