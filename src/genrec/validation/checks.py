"""The checks of each table. A row-level check is a rule on one row, as a Spark column that is true where the row
fails: failing rows are quarantined and counted (rows in = rows out + rows quarantined), all checks in one pass over
the table. A table-level check is a Great Expectations expectation on the whole table (a row count, a share of rows
that must hold): it stops the pipeline when it fails, since there is no row to set aside.

Row rules run in Spark rather than as GE expectations because GE evaluates each expectation with its own Spark jobs:
on the 10M-event month its 20 expectations took 28 s against 3 s for one aggregation of the same rules
(bench/results/scale.md), and the gap grows with the log. The report lists every rule, with its counts and which
engine checked it.

The rules that need other rows (duplicates, one user per request, an exposure before a click, busy users and
requests) are derived columns (add_event_columns, add_item_columns, add_page_columns), each computed from a small
aggregate of the table joined back, so that no rule shuffles the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import great_expectations.expectations as gxe

from genrec.data.schema import EVENT_TYPES, POSITIVE_EVENT_TYPES

RowRule = Callable[[], "Column"]  # noqa: F821 (a pyspark Column; built while a Spark session runs)


@dataclass
class Check:
    """One rule: `name` is stable (used in reports, quarantine reasons and MLflow metric names). Exactly one of
    `bad_rows` (row-level) and `expectation` (table-level) is set."""

    name: str
    description: str
    expectation: gxe.Expectation | None = None  # table-level: a GE expectation on the whole table
    bad_rows: RowRule | None = None  # row-level: a Spark column, true where a row fails
    automated: bool = False  # flags likely automated traffic (bots), gated by its own share, not as a data defect

    def __post_init__(self) -> None:
        if (self.expectation is None) == (self.bad_rows is None):
            raise ValueError(f"check {self.name}: give either a row rule or a table expectation")
        if self.expectation is not None:
            self.expectation.meta = {"check": self.name}
            self.expectation.description = self.description


def _col(name: str):
    from pyspark.sql import functions as F

    return F.col(name)


def _row(name: str, description: str, rule: RowRule, automated: bool = False) -> Check:
    return Check(name, description, bad_rows=rule, automated=automated)


def _not_null(col: str, what: str) -> Check:
    return _row(f"{col}_not_null", f"{what} is never null", lambda: _col(col).isNull())


def _flag(name: str, description: str, column: str, automated: bool = False) -> Check:
    """A row-level check on a derived boolean column that is True where the row is fine."""
    return _row(name, description, lambda: ~_col(column), automated)


def _at_least_zero(name: str, description: str, column: str) -> Check:
    return _row(name, description, lambda: _col(column) < 0)


def _utc(value: datetime) -> datetime:
    """A naive datetime is UTC; Spark compares instants."""
    from datetime import timezone

    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def event_checks(period_start: datetime, period_end: datetime, now: datetime, max_per_request: int = 0,
                 max_per_user_day: int = 0) -> list[Check]:
    """Checks of canonical events. Needs the derived columns of add_event_columns. A cap of 0 is no check."""
    lo, hi, now = _utc(period_start), _utc(period_end), _utc(now)
    caps = []
    if max_per_request:
        caps.append(_flag("request_oversized", f"a feed request has at most {max_per_request:,} events (more: "
                          f"likely a bot or a logging loop; the whole request is quarantined)", "request_not_oversized",
                          automated=True))
    if max_per_user_day:
        caps.append(_flag("user_day_hyperactive", f"a user has at most {max_per_user_day:,} events on one UTC day "
                          f"(more: likely automated; that user-day is quarantined)", "user_day_not_hyperactive",
                          automated=True))
    return [
        Check("not_empty", "the log has at least one event", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        _flag("numbers_finite", "numeric columns hold finite numbers (NaN or +-inf in an id or position is quarantined)",
              "numbers_finite"),
        _not_null("event_id", "event_id"),
        _not_null("user_id", "user_id"),
        _not_null("item_id", "item_id"),
        _not_null("ts", "the timestamp"),
        _not_null("event_type", "event_type"),  # the set check below passes nulls (GE skips them)
        _flag("event_id_unique", "event ids are unique (later copies of an id are quarantined)", "event_id_first"),
        _flag("event_duplicate", "no event repeats an earlier one in every key column of "
              "validation.duplicate_key_columns (double logging: later copies are quarantined, the first kept)",
              "first_copy"),
        _row("event_type_known", f"event_type is one of {', '.join(EVENT_TYPES)}",
             lambda: ~_col("event_type").isin(*EVENT_TYPES)),
        _row("ts_in_period", f"timestamps fall inside the logged period [{lo:%Y-%m-%d}, {hi:%Y-%m-%d})",
             lambda: (_col("ts") < lo) | (_col("ts") >= hi)),
        _row("ts_not_future", "no timestamp lies in the future", lambda: _col("ts") > now),
        _at_least_zero("user_id_non_negative", "user ids are non-negative", "user_id"),
        _at_least_zero("item_id_non_negative", "item ids are non-negative", "item_id"),
        _at_least_zero("position_non_negative", "positions, where given, are >= 0", "position"),
        _flag("item_in_catalog", "every event's item_id is in the (validated) catalog", "item_in_catalog"),
        _flag("request_single_user", "all events of a feed request belong to one user", "request_single_user"),
        # A broken exposure logger shows as clicks on items the request never exposed. A few are normal
        # (lost log lines); many mean the page data cannot be trusted, so this one stops the pipeline.
        Check("positive_has_exposure", "clicks, carts and orders of a feed request follow an exposure of the item (mostly)",
              gxe.ExpectColumnValuesToBeInSet(column="exposed_in_request", value_set=[True], mostly=0.95)),
        *caps,
    ]


EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "ts", "request_id", "position")


def join_small(df, small, keys: list[str], columns: dict[str, bool]):
    """Left-join a small aggregate's flag `columns` onto df on `keys`, a missing match taking the column's default.
    The aggregate is computed once and kept on disk; when it is empty (the usual case: nothing is wrong) the columns
    are constants and no pass over the table joins anything."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    small = small.persist(StorageLevel.DISK_ONLY)
    if small.isEmpty():
        small.unpersist()
        return df.withColumns({c: F.lit(v) for c, v in columns.items()})
    return df.join(small, keys, "left").withColumns({c: F.coalesce(c, F.lit(v)) for c, v in columns.items()})


def mark_first(df, groups: dict[str, tuple[list[str], bool]], order: list[str]):
    """Add one boolean column per entry of `groups` (flag -> (key columns, nulls exempt)): true on the first row, by
    `order`, of each group of rows equal in the key columns (nulls equal), false on its later copies; with nulls
    exempt, a row whose single key is null is true.

    Only the rows of groups that have more than one row are sorted: the groups come from an aggregation of a hash of
    the keys, which shuffles one number per row, not the rows.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    suspect, helpers = F.lit(False), []
    for flag, (keys, _) in groups.items():
        key = F.xxhash64(*keys) if len(keys) > 1 else F.col(keys[0])
        k, d = f"_key_{flag}", f"_repeated_{flag}"
        repeated = df.groupBy(key.alias(k)).count().where(F.col("count") > 1).select(k, F.lit(True).alias(d))
        df = join_small(df.withColumn(k, key), repeated, [k], {d: False})
        suspect = suspect | F.col(d)
        helpers += [k, d]
    by = [F.col(c).asc_nulls_last() for c in order]
    plain, odd = df.where(~suspect), df.where(suspect)
    for flag, (keys, nulls_exempt) in groups.items():
        plain = plain.withColumn(flag, F.lit(True))
        first = F.row_number().over(Window.partitionBy(*keys).orderBy(*by)) == 1
        odd = odd.withColumn(flag, (F.col(keys[0]).isNull() | first) if nulls_exempt else first)
    return plain.unionByName(odd).drop(*helpers)


def add_event_columns(events, item_ids, duplicate_keys: list[str] | tuple[str, ...] = (), max_per_request: int = 0,
                      max_per_user_day: int = 0):
    """Derived columns that some event checks read (a fact about a row that needs other rows or the catalog).

    events: conformed events; item_ids: a one-column DataFrame of the validated catalog's item ids;
    duplicate_keys: the columns that make two events the same action; the caps as in event_checks (0: no cap).
    Each fact comes from a small aggregate joined back (join_small): which user-days and requests are over a cap or
    mixed, which (request, item) pairs have a click but no exposure, which ids and keys repeat.
    """
    from pyspark.sql import functions as F

    ev = events
    if max_per_user_day:
        day = F.date_trunc("day", "ts")
        busy = (events.where(F.col("user_id").isNotNull() & F.col("ts").isNotNull())
                .groupBy("user_id", day.alias("_day")).count().where(F.col("count") > max_per_user_day)
                .select("user_id", "_day", F.lit(False).alias("user_day_not_hyperactive")))
        ev = join_small(ev.withColumn("_day", day), busy, ["user_id", "_day"], {"user_day_not_hyperactive": True})
        ev = ev.drop("_day")
    else:
        ev = ev.withColumn("user_day_not_hyperactive", F.lit(True))
    oversized = F.col("count") > max_per_request if max_per_request else F.lit(False)
    odd_requests = (events.where(F.col("request_id").isNotNull()).groupBy("request_id")
                    .agg(F.count(F.lit(1)).alias("count"), F.min("user_id").alias("lo"), F.max("user_id").alias("hi"))
                    .where(oversized | (F.col("lo") != F.col("hi")))
                    .select("request_id", (~oversized).alias("request_not_oversized"),
                            (F.col("lo") == F.col("hi")).alias("_one_user")))
    ev = join_small(ev, odd_requests, ["request_id"], {"request_not_oversized": True, "_one_user": True})
    ev = ev.withColumn("request_single_user", F.col("user_id").isNull() | F.col("_one_user")).drop("_one_user")
    # (request, item) pairs with a click, cart or order but no exposure: a few are lost log lines, many a broken
    # exposure logger (the table-level check positive_has_exposure).
    is_positive = F.col("event_type").isin(*POSITIVE_EVENT_TYPES)
    unexposed = (events.where(F.col("request_id").isNotNull() & F.col("item_id").isNotNull())
                 .groupBy("request_id", "item_id")
                 .agg(F.max((F.col("event_type") == "expose").cast("int")).alias("shown"),
                      F.max(is_positive.cast("int")).alias("clicked"))
                 .where((F.col("clicked") == 1) & (F.col("shown") == 0))
                 .select("request_id", "item_id", F.lit(True).alias("_unexposed")))
    ev = join_small(ev, unexposed, ["request_id", "item_id"], {"_unexposed": False})
    positive = F.col("request_id").isNotNull() & is_positive
    # Null where the rule does not apply (exposures, events without a request): the check's share counts positives.
    ev = ev.withColumn("exposed_in_request", F.when(positive, F.col("item_id").isNotNull() & ~F.col("_unexposed")))
    ev = ev.drop("_unexposed")
    catalog = item_ids.select("item_id").distinct().withColumn("item_in_catalog", F.lit(True))
    ev = ev.join(F.broadcast(catalog), "item_id", "left")
    ev = ev.withColumn("item_in_catalog", F.coalesce("item_in_catalog", F.lit(False)))
    groups = {"event_id_first": (["event_id"], True)}
    if duplicate_keys:
        groups["first_copy"] = (list(duplicate_keys), False)
    else:
        ev = ev.withColumn("first_copy", F.lit(True))
    return mark_first(ev, groups, list(EVENT_COLUMNS))


def item_checks() -> list[Check]:
    """Checks of the catalog. Needs add_item_columns."""
    return [
        Check("not_empty", "the catalog has at least one item", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        _not_null("item_id", "item_id"),
        _flag("item_id_unique", "item ids are unique (later copies are quarantined)", "item_id_first"),
        _at_least_zero("item_id_non_negative", "item ids are non-negative", "item_id"),
        _at_least_zero("price_non_negative", "prices, where given, are >= 0", "price"),
        _flag("numbers_finite", "prices, where given, are finite (NaN or +-inf is quarantined; a missing price is null)",
              "numbers_finite"),
        _flag("text_utf8", "title, description, category and brand are valid UTF-8 text", "text_utf8"),
        Check("has_text", "an item has at least one of title, description, category, brand (mostly)",
              gxe.ExpectColumnValuesToNotBeNull(column="any_text", mostly=0.9)),
    ]


def add_item_columns(items):
    """Derived columns of the catalog's checks: the first row of each item id, any text at all."""
    from pyspark.sql import functions as F

    items = items.withColumn("any_text", F.coalesce("title", "description", "category", "brand"))
    order = ["item_id", "title", "description", "category", "brand", "price", "image_path"]
    return mark_first(items, {"item_id_first": (["item_id"], True)}, order)


def page_checks(max_history: int) -> list[Check]:
    """Checks of the training pages written by sessionization. Needs add_page_columns."""
    return [
        Check("not_empty", "there is at least one page", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        _not_null("page_id", "page_id"),
        _not_null("user_id", "user_id"),
        _flag("page_id_unique", "page ids are unique", "page_id_first"),
        _row("split_known", "split is train, valid or test", lambda: ~_col("split").isin("train", "valid", "test")),
        _row("history_before_page", "every history item happened strictly before the page began (no leakage)",
             lambda: _col("history_last_ts") >= _col("page_start")),
        _flag("history_chronological", "history is in chronological order", "history_sorted"),
        _row("history_length", f"history holds at most {max_history} items", lambda: _col("history_len") > max_history),
        _row("target_not_empty", "every page has at least one item", lambda: _col("n_page_items") < 1),
        _flag("page_groups_disjoint", "an item appears in one group of a page only (its most intense event)",
              "groups_disjoint"),
    ]


PAGE_GROUPS = ("ordered_items", "carted_items", "clicked_items", "exposed_items")


def add_page_columns(pages):
    """Derived columns that page checks read: history length and last time, page size, disjoint groups, the first
    row of each page id."""
    from pyspark.sql import functions as F

    hist_ts = F.coalesce("history_ts", F.array())
    sizes = sum((F.size(F.coalesce(g, F.array())) for g in PAGE_GROUPS[1:]), F.size(F.coalesce(PAGE_GROUPS[0], F.array())))
    together = F.concat(*[F.coalesce(g, F.array()) for g in PAGE_GROUPS])
    sorted_ts = F.forall(F.sequence(F.lit(1), F.greatest(F.size(hist_ts) - 1, F.lit(1))),
                         lambda i: (F.size(hist_ts) < 2) | (F.element_at(hist_ts, i + 1) >= F.element_at(hist_ts, i)))
    pages = (pages.withColumn("history_len", F.size(F.coalesce("history_items", F.array())))
             .withColumn("history_last_ts", F.array_max(hist_ts))
             .withColumn("history_sorted", sorted_ts)
             .withColumn("n_page_items", sizes)
             .withColumn("groups_disjoint", F.size(F.array_distinct(together)) == sizes))
    return mark_first(pages, {"page_id_first": (["page_id"], True)}, ["page_id", "user_id", "page_start", "session_id"])


def sid_checks(n_items: int, sizes: list[int]) -> list[Check]:
    """Checks of the item -> SID table: one SID per item of the catalog, codes in range, SIDs unique."""
    cols = [f"s{level + 1}" for level in range(len(sizes))]
    checks = [
        Check("one_row_per_item", f"the table has exactly one row per catalog item ({n_items})",
              gxe.ExpectTableRowCountToEqual(value=n_items)),
        Check("item_id_unique", "every item appears once", gxe.ExpectColumnValuesToBeUnique(column="item_id")),
        Check("sid_unique", "no two items share a semantic ID", gxe.ExpectCompoundColumnsToBeUnique(column_list=cols)),
    ]
    for col, k in zip(cols, sizes):
        checks.append(Check(f"{col}_in_range", f"code {col} lies in [0, {k})",
                            gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0, max_value=k - 1)))
    return checks
