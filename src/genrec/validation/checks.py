"""The checks of each table: a Great Expectations expectation plus, for row-level checks, the same
rule as a pandas mask so that failing rows can be quarantined (rows in = rows out + rows quarantined).

Table-level checks (no mask) stop the pipeline when they fail: there is no row to set aside.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import numpy as np
import pandas as pd
import great_expectations.expectations as gxe

from genrec.data.schema import EVENT_TYPES, POSITIVE_EVENT_TYPES

Mask = Callable[[pd.DataFrame], "pd.Series"]


@dataclass
class Check:
    """One rule: `name` is stable (used in reports, quarantine reasons and MLflow metric names)."""

    name: str
    description: str
    expectation: gxe.Expectation
    bad_rows: Mask | None = None  # row-level: True where a row fails; None: table-level
    automated: bool = False  # flags likely automated traffic (bots), gated by its own share, not as a data defect

    def __post_init__(self) -> None:
        self.expectation.meta = {"check": self.name}
        self.expectation.description = self.description


def _not_null(col: str, what: str) -> Check:
    return Check(f"{col}_not_null", f"{what} is never null", gxe.ExpectColumnValuesToNotBeNull(column=col),
                 lambda df: df[col].isna())


def _ts(value: datetime) -> pd.Timestamp:
    return pd.Timestamp(value).tz_convert("UTC") if pd.Timestamp(value).tzinfo else pd.Timestamp(value, tz="UTC")


def _flag(name: str, description: str, column: str) -> Check:
    """A row-level check on a derived boolean column that is True where the row is fine."""
    return Check(name, description, gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True]),
                 lambda df: ~df[column].astype(bool))


def _at_most(name: str, description: str, column: str, cap: int) -> Check:
    return Check(name, description, gxe.ExpectColumnValuesToBeBetween(column=column, max_value=cap),
                 lambda df: (df[column] > cap).fillna(False), automated=True)


def event_checks(period_start: datetime, period_end: datetime, now: datetime, max_per_request: int = 0,
                 max_per_user_day: int = 0) -> list[Check]:
    """Checks of canonical events. Needs the derived columns of add_event_columns. A cap of 0 is no check."""
    lo, hi, now = _ts(period_start), _ts(period_end), _ts(now)
    caps = []
    if max_per_request:
        caps.append(_at_most("request_oversized", f"a feed request has at most {max_per_request:,} events (more: "
                             f"likely a bot or a logging loop; the whole request is quarantined)", "request_events",
                             max_per_request))
    if max_per_user_day:
        caps.append(_at_most("user_day_hyperactive", f"a user has at most {max_per_user_day:,} events on one UTC day "
                             f"(more: likely automated; that user-day is quarantined)", "user_day_events",
                             max_per_user_day))
    return [
        Check("not_empty", "the log has at least one event", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        _flag("numbers_finite", "numeric columns hold finite numbers (NaN or +-inf in an id or position is quarantined)",
              "numbers_finite"),
        _not_null("event_id", "event_id"),
        _not_null("user_id", "user_id"),
        _not_null("item_id", "item_id"),
        _not_null("ts", "the timestamp"),
        _not_null("event_type", "event_type"),  # the set check below passes nulls (GE skips them)
        Check("event_id_unique", "event ids are unique (later copies of an id are quarantined)",
              gxe.ExpectColumnValuesToBeUnique(column="event_id"),
              lambda df: df["event_id"].duplicated(keep="first") & df["event_id"].notna()),
        _flag("event_duplicate", "no event repeats an earlier one in every key column of "
              "validation.duplicate_key_columns (double logging: later copies are quarantined, the first kept)",
              "first_copy"),
        Check("event_type_known", f"event_type is one of {', '.join(EVENT_TYPES)}",
              gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
              lambda df: ~df["event_type"].isin(EVENT_TYPES)),
        Check("ts_in_period", f"timestamps fall inside the logged period [{lo:%Y-%m-%d}, {hi:%Y-%m-%d})",
              gxe.ExpectColumnValuesToBeBetween(column="ts", min_value=lo, max_value=hi, strict_max=True),
              lambda df: df["ts"].notna() & ((df["ts"] < lo) | (df["ts"] >= hi))),
        Check("ts_not_future", "no timestamp lies in the future",
              gxe.ExpectColumnValuesToBeBetween(column="ts", max_value=now),
              lambda df: df["ts"].notna() & (df["ts"] > now)),
        Check("user_id_non_negative", "user ids are non-negative", gxe.ExpectColumnValuesToBeBetween(column="user_id", min_value=0),
              lambda df: (df["user_id"] < 0).fillna(False)),
        Check("item_id_non_negative", "item ids are non-negative", gxe.ExpectColumnValuesToBeBetween(column="item_id", min_value=0),
              lambda df: (df["item_id"] < 0).fillna(False)),
        Check("position_non_negative", "positions, where given, are >= 0",
              gxe.ExpectColumnValuesToBeBetween(column="position", min_value=0),
              lambda df: (df["position"] < 0).fillna(False)),
        Check("item_in_catalog", "every event's item_id is in the (validated) catalog",
              gxe.ExpectColumnValuesToBeInSet(column="item_in_catalog", value_set=[True]),
              lambda df: ~df["item_in_catalog"]),
        Check("request_single_user", "all events of a feed request belong to one user",
              gxe.ExpectColumnValuesToBeInSet(column="request_single_user", value_set=[True]),
              lambda df: ~df["request_single_user"]),
        # A broken exposure logger shows as clicks on items the request never exposed. A few are normal
        # (lost log lines); many mean the page data cannot be trusted, so this one stops the pipeline.
        Check("positive_has_exposure", "clicks, carts and orders of a feed request follow an exposure of the item (mostly)",
              gxe.ExpectColumnValuesToBeInSet(column="exposed_in_request", value_set=[True], mostly=0.95)),
        *caps,
    ]


def add_event_columns(events: pd.DataFrame, item_ids: np.ndarray, finite: np.ndarray | None = None,
                      duplicate_keys: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Derived columns that some event checks read (a fact about a row that needs another table or group).

    `finite` marks rows whose numbers were all finite before conforming (see conform); `duplicate_keys` are the
    columns that make two events the same action.
    """
    out = events.copy()
    out["numbers_finite"] = np.ones(len(out), dtype=bool) if finite is None else finite
    out["first_copy"] = ~out.duplicated(subset=list(duplicate_keys), keep="first") if duplicate_keys else True
    out["item_in_catalog"] = out["item_id"].isin(item_ids).astype(bool)
    out["request_events"] = out.groupby("request_id", dropna=True)["event_type"].transform("size").astype("Int64")
    day = out["ts"].dt.floor("D")
    out["user_day_events"] = out.groupby([out["user_id"], day], dropna=True)["event_type"].transform("size").astype("Int64")
    req = out[["request_id", "user_id"]].dropna()
    n_users = req.groupby("request_id")["user_id"].transform("nunique")
    out["request_single_user"] = True
    out.loc[n_users.index, "request_single_user"] = (n_users == 1).to_numpy()
    # Positive events with a request id: was the item exposed in that request? Null where that does not
    # apply (exposures, events without a request), so the check's share counts positive events only.
    exposed = out.loc[out["event_type"] == "expose", ["request_id", "item_id"]].dropna().drop_duplicates()
    exposed["_seen"] = True
    positive = (out["request_id"].notna() & out["event_type"].isin(POSITIVE_EVENT_TYPES)).to_numpy()
    seen = out.loc[positive, ["request_id", "item_id"]].merge(exposed, how="left", on=["request_id", "item_id"])["_seen"]
    flag = pd.array([pd.NA] * len(out), dtype="boolean")
    flag[positive] = seen.notna().to_numpy()
    out["exposed_in_request"] = flag
    return out


def item_checks() -> list[Check]:
    """Checks of the catalog."""
    return [
        Check("not_empty", "the catalog has at least one item", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        _not_null("item_id", "item_id"),
        Check("item_id_unique", "item ids are unique (later copies are quarantined)",
              gxe.ExpectColumnValuesToBeUnique(column="item_id"),
              lambda df: df["item_id"].duplicated(keep="first") & df["item_id"].notna()),
        Check("item_id_non_negative", "item ids are non-negative", gxe.ExpectColumnValuesToBeBetween(column="item_id", min_value=0),
              lambda df: (df["item_id"] < 0).fillna(False)),
        Check("price_non_negative", "prices, where given, are >= 0", gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0),
              lambda df: (df["price"] < 0).fillna(False)),
        _flag("numbers_finite", "prices, where given, are finite (NaN or +-inf is quarantined; a missing price is null)",
              "numbers_finite"),
        Check("text_utf8", "title, description, category and brand are valid UTF-8 text",
              gxe.ExpectColumnValuesToBeInSet(column="text_utf8", value_set=[True]), lambda df: ~df["text_utf8"]),
        Check("has_text", "an item has at least one of title, description, category, brand (mostly)",
              gxe.ExpectColumnValuesToNotBeNull(column="any_text", mostly=0.9)),
    ]


def page_checks(max_history: int) -> list[Check]:
    """Checks of the training pages written by sessionization. Needs add_page_columns."""
    return [
        Check("not_empty", "there is at least one page", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        _not_null("page_id", "page_id"),
        _not_null("user_id", "user_id"),
        Check("page_id_unique", "page ids are unique", gxe.ExpectColumnValuesToBeUnique(column="page_id"),
              lambda df: df["page_id"].duplicated(keep="first")),
        Check("split_known", "split is train, valid or test",
              gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "valid", "test"]),
              lambda df: ~df["split"].isin(["train", "valid", "test"])),
        Check("history_before_page", "every history item happened strictly before the page began (no leakage)",
              gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="page_start", column_B="history_last_ts",
                                                          or_equal=False, ignore_row_if="either_value_is_missing"),
              lambda df: df["history_last_ts"].notna() & (df["history_last_ts"] >= df["page_start"])),
        Check("history_chronological", "history is in chronological order",
              gxe.ExpectColumnValuesToBeInSet(column="history_sorted", value_set=[True]), lambda df: ~df["history_sorted"]),
        Check("history_length", f"history holds at most {max_history} items",
              gxe.ExpectColumnValuesToBeBetween(column="history_len", min_value=0, max_value=max_history),
              lambda df: df["history_len"] > max_history),
        Check("target_not_empty", "every page has at least one item", gxe.ExpectColumnValuesToBeBetween(column="n_page_items", min_value=1),
              lambda df: df["n_page_items"] < 1),
        Check("page_groups_disjoint", "an item appears in one group of a page only (its most intense event)",
              gxe.ExpectColumnValuesToBeInSet(column="groups_disjoint", value_set=[True]), lambda df: ~df["groups_disjoint"]),
    ]


PAGE_GROUPS = ("ordered_items", "carted_items", "clicked_items", "exposed_items")


def add_page_columns(pages: pd.DataFrame) -> pd.DataFrame:
    """Derived columns that page checks read: history length and last time, page size, disjoint groups."""
    out = pages.copy()
    hist_ts = out["history_ts"]
    out["history_len"] = out["history_items"].map(len)
    out["history_last_ts"] = pd.to_datetime(hist_ts.map(lambda a: max(a) if len(a) else pd.NaT), utc=True)
    out["history_sorted"] = hist_ts.map(lambda a: bool(np.all(np.asarray(a)[1:] >= np.asarray(a)[:-1])) if len(a) > 1 else True)
    sizes = sum(out[g].map(len) for g in PAGE_GROUPS)
    out["n_page_items"] = sizes
    distinct = out[list(PAGE_GROUPS)].apply(lambda r: len(set().union(*[set(x) for x in r])), axis=1)
    out["groups_disjoint"] = distinct == sizes
    return out


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
