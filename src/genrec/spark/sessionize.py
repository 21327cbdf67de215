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

Outputs under --out: pages/ (parquet, partitioned by split), sessions/, pairs/, and, from spark-submit, the report as
_report/ (a one-line text dataset, since only Spark can write where a cluster's job writes). --out and --events may
be URIs (s3a://bucket/..., file:///...) when the job runs on a cluster.
"""

from __future__ import annotations

import json
import time

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


# Every step below groups, windows or joins by keys that start with user_id. After one shuffle of the events by user
# (sessionize), Spark reuses that partitioning for all of them (spark.sql.requireAllClusterKeysForCoPartition=false,
# genrec.spark.session): the month is shuffled once, not once per step.
def by_user():
    """A user's events in time order (ties by event_id); a function, since a window needs a running SparkContext."""
    return Window.partitionBy("user_id").orderBy("ts", "event_id")


def assign_sessions(events: DataFrame, gap_minutes: float) -> DataFrame:
    """Add session_idx (the user's sessions numbered from 0): a new session after `gap_minutes` of inactivity."""
    gap_s = F.col("ts").cast("double") - F.lag(F.col("ts").cast("double")).over(by_user())
    new = F.when(gap_s.isNull() | (gap_s > gap_minutes * 60.0), 1).otherwise(0)
    ev = events.withColumn("new_session", new)
    return ev.withColumn("session_idx", F.sum("new_session").over(by_user().rowsBetween(Window.unboundedPreceding, 0)) - 1)


def session_id(user, session_idx):
    """u-<user>-s-<session_idx>."""
    return F.concat_ws("-", F.lit("u"), user, F.lit("s"), session_idx)


# A page is the events of one request; without a request id (fallback_page_size), a chunk of a session. Its key is
# numeric (request_id, fallback_session, page_chunk) so that no per-event string is built; page_id names it.
PAGE_KEY = ["request_id", "fallback_session", "page_chunk"]


def page_id(user="user_id"):
    """r<request_id>, or u-<user>-s-<session>-p-<chunk> for a page cut from a session."""
    cut = F.concat_ws("-", F.lit("u"), F.col(user), F.lit("s"), F.col("fallback_session"), F.lit("p"),
                      F.col("page_chunk"))
    return F.when(F.col("request_id").isNotNull(), F.concat(F.lit("r"), F.col("request_id").cast("string"))).otherwise(cut)


def assign_pages(ev: DataFrame, fallback_page_size: int) -> DataFrame:
    """Add the page key (PAGE_KEY): the request id, or the fallback rule for events without one (needs
    assign_sessions)."""
    running = by_user().rowsBetween(Window.unboundedPreceding, 0)
    # An event's rank within its session: its rank for the user minus that of its session's first event.
    ev = ev.withColumn("_rank", F.row_number().over(by_user()))
    session_first = F.max(F.when(F.col("new_session") == 1, F.col("_rank"))).over(running)
    chunk = F.floor((F.col("_rank") - session_first) / fallback_page_size)
    no_request = F.col("request_id").isNull()
    return (ev.withColumn("fallback_session", F.when(no_request, F.col("session_idx")))
            .withColumn("page_chunk", F.when(no_request, chunk)).drop("_rank"))


def build_pages(ev: DataFrame, max_history: int) -> DataFrame:
    """One row per page: its user, session, start, grouped items and history."""
    ev = ev.withColumn("intensity", intensity())
    page = ["user_id", *PAGE_KEY]
    per_item = ev.groupBy(*page, "item_id").agg(
        F.max("intensity").alias("intensity"),
        F.min(F.coalesce("position", F.lit(1 << 30))).alias("pos"),
        F.min("ts").alias("first_ts"),
        F.min(F.when(F.col("intensity") > 0, F.col("ts"))).alias("pos_ts"),
        F.min("session_idx").alias("session_idx"),
        F.count("*").alias("n_events"),
    )
    # One list per page, sorted once by (position, first time, item); each group keeps that order.
    items = F.array_sort(F.collect_list(F.struct("pos", "first_ts", "item_id", "intensity")))
    pages = per_item.groupBy(*page).agg(
        F.min("first_ts").alias("page_start"),
        F.min("session_idx").alias("session_idx"),  # it grows with time: the session of the page's first event
        F.sum("n_events").alias("n_events"),
        items.alias("items"),
    )
    for k, name in GROUPS.items():
        pages = pages.withColumn(name, F.transform(F.filter("items", lambda x: x["intensity"] == k),
                                                   lambda x: x["item_id"]))
    positives = per_item.where(F.col("intensity") > 0).withColumn("page_id", page_id())
    user_hist = positives.groupBy("user_id").agg(
        F.array_sort(F.collect_list(F.struct(F.col("pos_ts").alias("ts"), "item_id", "intensity", "page_id"))).alias("events"))
    pages = pages.join(user_hist, "user_id", "left")
    before = F.filter(F.coalesce("events", F.array()), lambda x: x["ts"] < F.col("page_start"))
    pages = pages.withColumn("hist", before)
    start = F.greatest(F.size("hist") - F.lit(max_history) + 1, F.lit(1))
    pages = pages.withColumn("hist", F.slice("hist", start, F.lit(max_history)))
    return pages.select(
        page_id().alias("page_id"), "user_id", session_id(F.col("user_id"), F.col("session_idx")).alias("session_id"),
        "page_start", "n_events",
        F.transform("hist", lambda x: x["item_id"]).alias("history_items"),
        F.transform("hist", lambda x: x["ts"]).alias("history_ts"),
        F.transform("hist", lambda x: x["intensity"]).alias("history_intensity"),
        *GROUPS.values(),
    )


def last_page_day(ev: DataFrame):
    """The day the last page starts on (a page starts with its first event)."""
    starts = ev.groupBy("user_id", *PAGE_KEY).agg(F.min("ts").alias("page_start"))
    return starts.agg(F.max(F.to_date("page_start")).alias("d")).collect()[0]["d"]


def assign_split(pages: DataFrame, mode: str, test_days: int, valid_days: int = 0, last_day=None) -> DataFrame:
    """Add split: train / valid / test. last_days counts back from `last_day` (default: the last page's day)."""
    if mode == "last_days":
        if last_day is None:
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


def coengagement_pairs(ev: DataFrame, train_pages: DataFrame, max_items: int, sequence_window: int = 0) -> DataFrame:
    """(item_a, item_b, n_sessions), a < b: items with a positive event in the same train session, counted over
    sessions. train_pages: (user_id, page_id) of the train pages. With sequence_window > 0 also each positive
    interaction of a user with the next `sequence_window` ones (train pages only), each such window counting as one
    more session: the rule for sources whose sessions hold a single interaction (Amazon Beauty)."""
    positives = ev.where(F.col("event_type") != "expose").withColumn("page_id", page_id()) \
        .join(train_pages, ["user_id", "page_id"])
    pos = positives.groupBy("user_id", "session_idx", "item_id").agg(F.min("ts").alias("t"))
    w = Window.partitionBy("user_id", "session_idx").orderBy("t", "item_id")
    pos = pos.withColumn("k", F.row_number().over(w)).where(F.col("k") <= max_items).select("user_id", "session_idx",
                                                                                              "item_id")
    a, b = pos.alias("a"), pos.alias("b")
    pairs = a.join(b, (F.col("a.user_id") == F.col("b.user_id")) & (F.col("a.session_idx") == F.col("b.session_idx"))
                   & (F.col("a.item_id") < F.col("b.item_id")))
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
    """Run the job: pages/, sessions/ and pairs/ under out_dir (a local folder or a URI); returns the report.

    The events are shuffled by user once, sessions and pages assigned, and kept on disk for the three outputs; the
    report is computed from the written tables.
    """
    from pyspark import StorageLevel

    t0 = time.time()
    events = spark.read.parquet(str(events_path))
    ev = assign_pages(assign_sessions(events.repartition("user_id"), cfg.session_gap_minutes), cfg.fallback_page_size)
    ev = ev.persist(StorageLevel.DISK_ONLY)
    try:
        split = cfg.split
        last_day = last_page_day(ev) if split.mode == "last_days" else None
        pages = assign_split(build_pages(ev, cfg.max_history), split.mode, split.test_days, split.valid_days, last_day)
        pages.coalesce(cfg.output_partitions).write.mode("overwrite").partitionBy("split").parquet(_at(out_dir, "pages"))
        written = spark.read.parquet(_at(out_dir, "pages"))

        # Per session and page first, then per session: its pages are counted as groups (null-safe keys).
        parts = ev.groupBy("user_id", "session_idx", *PAGE_KEY).agg(
            F.min("ts").alias("start"), F.max("ts").alias("end"), F.count("*").alias("n"))
        sessions = parts.groupBy("user_id", "session_idx").agg(
            F.min("start").alias("session_start"), F.max("end").alias("session_end"),
            F.sum("n").alias("n_events"), F.count("*").alias("n_pages"))
        sessions.select(session_id(F.col("user_id"), F.col("session_idx")).alias("session_id"), "user_id",
                        "session_start", "session_end", "n_events", "n_pages") \
            .write.mode("overwrite").parquet(_at(out_dir, "sessions"))
        train = written.where(F.col("split") == "train").select("user_id", "page_id")
        pairs = coengagement_pairs(ev, train, cfg.max_items_per_session_for_pairs, cfg.sequence_pair_window)
        pairs.write.mode("overwrite").parquet(_at(out_dir, "pairs"))
        report = _report(spark, ev, written, out_dir)
    finally:
        ev.unpersist()
    report["duration_s"] = round(time.time() - t0, 2)
    report["spark_master"] = spark.sparkContext.master
    return report


def write_report(spark: SparkSession, report: dict, out_dir: str) -> None:
    """The report as one JSON line in out_dir/_report/ (a text dataset: only Spark can write where a cluster's job
    writes, e.g. s3a://); the underscore keeps it out of the tables' parts."""
    spark.createDataFrame([(json.dumps(report),)], ["report"]).coalesce(1).write.mode("overwrite").text(
        _at(out_dir, REMOTE_REPORT))


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
