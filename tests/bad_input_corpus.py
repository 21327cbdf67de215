"""The bad-input corpus: each kind of broken log that a real event source brings, and the outcome it must get.

tests/test_bad_inputs.py runs every case; `make bad-inputs-doc` writes the README's table from this list (a test
fails when the README is stale), so the documented outcomes are the tested ones.

Outcomes: "stop" (the stage stops with a report naming the problem), "error" (a clear error before validation: the
file or the source is unusable), "quarantine" ({table: {check: rows}}, rows None: any positive count) or "pass".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from genrec.config import SimulatorConfig
from genrec.data.simulator import simulate

BASE = simulate(SimulatorConfig(n_users=60, n_items=100, days=5), seed=7, progress=False)
EVENTS = BASE.events.to_pandas()
ITEMS = BASE.items.to_pandas()
N = len(EVENTS)
FUTURE = pd.Timestamp(datetime.now(timezone.utc) + timedelta(days=2))


@dataclass
class Case:
    name: str
    what: str  # the defect, as a reader of the README would describe it
    mutate: Callable  # (events, items) -> (events, items): pandas frames or Arrow tables
    outcome: str  # stop | error | quarantine | pass
    expected: object = None  # stop/error: text in the message; quarantine: {table: {check: rows}}
    overrides: tuple[str, ...] = ()  # config overrides the case runs with
    stage: str = "validate-events"  # or "ingest" (a source.kind=parquet folder, then validate-events)
    files: Callable | None = None  # (folder) -> None: damages the written files
    verify: Callable | None = None  # (validated events frame) -> bool, for cases that pass


# -- helpers -------------------------------------------------------------------------------------------------


def _nullable(df, col, rows):
    df = df.copy()
    df[col] = df[col].astype("Int64")
    df.loc[df.index[rows], col] = pd.NA
    return df


def _set(df, col, rows, value):
    df = df.copy()
    df.loc[df.index[rows], col] = value
    return df


def _arrow(df: pd.DataFrame, col: str, values) -> pa.Table:
    """df as Arrow with `col` replaced verbatim (from_pandas=False keeps NaN a NaN, not a null)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    return table.set_column(table.schema.get_field_index(col), col, pa.array(values, from_pandas=False))


def _rare_item(ev):
    counts = ev["item_id"].value_counts().reindex(ITEMS["item_id"], fill_value=0)
    return int(counts.idxmin())


def _two_users_in_request(ev, it):
    ev = ev.copy()
    first = ev.index[ev["request_id"] == ev["request_id"].iloc[0]][0]
    ev.loc[first, "user_id"] = ev["user_id"].max() + 1
    return ev, it


def _non_utf8_title(ev, it):
    titles = [t.encode() for t in it["title"]]
    titles[_rare_item(ev)] = b"\xff\xfe broken \xc3"
    table = pa.Table.from_pandas(it, preserve_index=False)
    return ev, table.set_column(table.schema.get_field_index("title"), "title", pa.array(titles, pa.binary()))


def _float_ids(ev, col, row, value):
    values = ev[col].astype("float64").to_numpy().copy()
    values[row] = value
    return _arrow(ev, col, values)


def _item_price(ev, it, value):
    values = it["price"].astype("float64").to_numpy().copy()
    values[_rare_item(ev)] = value
    return ev, _arrow(it, "price", values)


def _bot_request(n_extra):
    """One request of a user gets n_extra more exposures (a logging loop): new ids, positions and items."""
    def mutate(ev, it):
        req = ev["request_id"].iloc[0]
        row = ev[ev["request_id"] == req].iloc[0]
        rng = np.random.default_rng(0)
        extra = pd.DataFrame({"event_id": ev["event_id"].max() + 1 + np.arange(n_extra), "user_id": row.user_id,
                              "item_id": rng.integers(0, len(it), n_extra), "event_type": "expose",
                              "ts": row.ts + pd.to_timedelta(np.arange(n_extra), unit="ms"), "request_id": req,
                              "position": (100 + np.arange(n_extra)).astype("int32")})
        return pd.concat([ev, extra.astype(ev.dtypes.to_dict())], ignore_index=True), it
    return mutate


def _double_logged(ev, it):
    """A logger writes 40 events twice, the copies under new event ids."""
    copies = ev.iloc[200:240].copy()
    copies["event_id"] = ev["event_id"].max() + 1 + np.arange(len(copies))
    return pd.concat([ev, copies], ignore_index=True), it


def _busiest_user_day():
    day = EVENTS["ts"].dt.floor("D")
    return int(EVENTS.groupby([EVENTS["user_id"], day]).size().max())


def _epoch(unit):
    def mutate(ev, it):
        return ev.assign(ts=(ev["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, unit=unit)), it
    return mutate


def _same_instants(clean: pd.DataFrame) -> bool:
    """The validated times equal the simulator's, event by event (to the unit the case wrote)."""
    merged = clean.merge(EVENTS[["event_id", "ts"]], on="event_id", suffixes=("", "_true"))
    delta = (merged["ts"] - merged["ts_true"]).abs()
    return len(merged) == len(clean) == N and bool((delta < pd.Timedelta(seconds=1)).all())


def _truncate(name):
    def damage(root: Path):
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: len(data) // 2])
    return damage


def _corrupt_footer(root: Path):
    data = bytearray((root / "events.parquet").read_bytes())
    data[-12:-4] = b"\x00" * 8  # the footer's length: the reader cannot find the metadata
    (root / "events.parquet").write_bytes(bytes(data))


def _utc_strings(ev, it, zone="Europe/Berlin"):
    return ev.assign(ts=ev["ts"].dt.tz_convert(zone).map(lambda t: t.isoformat())), it


def _naive_strings(ev, it):
    return ev.assign(ts=ev["ts"].dt.tz_localize(None).map(lambda t: t.isoformat())), it


# -- the corpus ----------------------------------------------------------------------------------------------

CASES = [
    # Schema and types
    Case("missing_column", "events lack a required column (ts)", lambda e, i: (e.drop(columns=["ts"]), i),
         "stop", "required column 'ts' is missing"),
    Case("wrong_type", "user ids written as strings", lambda e, i: (e.assign(user_id=e["user_id"].astype(str)), i),
         "stop", "column 'user_id' has type string"),
    Case("fractional_ids", "item ids with fractions (2.5)", lambda e, i: (e.assign(item_id=e["item_id"] + 0.5), i),
         "stop", "'item_id' cannot be read as int64"),
    Case("fractional_position", "a position with a fraction", lambda e, i: (_set(e.astype({"position": "float64"}),
         "position", [4], 2.5), i), "stop", "'position' cannot be read as int32"),
    Case("position_overflow", "a position too large for int32 (a counter gone wild)",
         lambda e, i: (_set(e.astype({"position": "int64"}), "position", [4], 2**40), i),
         "stop", "'position' cannot be read as int32"),
    Case("extra_columns", "events carry columns the pipeline does not use (session_id, app_version)",
         lambda e, i: (e.assign(session_id=1, app_version="9.1"), i), "pass", {}),
    Case("reordered_columns", "columns in another order", lambda e, i: (e[list(reversed(e.columns))], i), "pass", {}),
    Case("dictionary_event_type", "event_type dictionary-encoded (a pandas category, Spark's default for low "
         "cardinality)", lambda e, i: (e.assign(event_type=e["event_type"].astype("category")), i), "pass", {}),
    Case("shuffled_rows", "events not in time order", lambda e, i: (e.sample(frac=1.0, random_state=0), i), "pass", {}),
    Case("items_missing_item_id", "the catalog lacks item_id", lambda e, i: (e, i.drop(columns=["item_id"])),
         "stop", "items.parquet: required column 'item_id'"),
    Case("price_as_string", "prices written as strings (\"$12.99\")", lambda e, i: (e, i.assign(price="$12.99")),
         "stop", "column 'price' has type string"),
    # Ids, types of events, nulls
    Case("null_event_ids", "events without an event id", lambda e, i: (_nullable(e, "event_id", [3, 4]), i),
         "quarantine", {"events": {"event_id_not_null": 2}}),
    Case("null_user_ids", "events without a user", lambda e, i: (_nullable(e, "user_id", [3, 50, 51]), i),
         "quarantine", {"events": {"user_id_not_null": 3}}),
    Case("null_item_ids", "events without an item", lambda e, i: (_nullable(e, "item_id", [7, 8]), i),
         "quarantine", {"events": {"item_id_not_null": 2}}),
    Case("null_event_type", "events without an event type", lambda e, i: (_set(e, "event_type", [6, 9], None), i),
         "quarantine", {"events": {"event_type_not_null": 2}}),
    Case("unknown_event_type", "an event type the pipeline does not know (view)",
         lambda e, i: (_set(e, "event_type", [1, 2, 3, 4], "view"), i), "quarantine", {"events": {"event_type_known": 4}}),
    Case("event_type_case", "event types in other case or with spaces (\"CLICK\", \"click \")",
         lambda e, i: (_set(_set(e, "event_type", [12], "CLICK"), "event_type", [13], "click "), i),
         "quarantine", {"events": {"event_type_known": 2}}),
    Case("negative_user_id", "a user id below 0 (a sentinel such as -5)",
         lambda e, i: (e.assign(user_id=e["user_id"].where(e["user_id"] != e["user_id"].value_counts().idxmin(), -5)), i),
         "quarantine", {"events": {"user_id_non_negative": None}}),
    Case("negative_item_id", "an item id below 0", lambda e, i: (_set(e, "item_id", [15], -1), i),
         "quarantine", {"events": {"item_id_non_negative": 1}}),
    Case("negative_position", "a position below 0", lambda e, i: (_set(e, "position", [5], -1), i),
         "quarantine", {"events": {"position_non_negative": 1}}),
    Case("infinite_item_id", "an item id of +inf in a float id column", lambda e, i: (_float_ids(e, "item_id", 16, np.inf), i),
         "quarantine", {"events": {"numbers_finite": 1, "item_id_not_null": 1}}),
    Case("nan_user_id", "a user id that is NaN (not null) in a float id column",
         lambda e, i: (_float_ids(e, "user_id", 17, np.nan), i),
         "quarantine", {"events": {"numbers_finite": 1, "user_id_not_null": 1}}),
    Case("unknown_items", "events on items missing from the catalog", lambda e, i: (_set(e, "item_id", [40, 41, 42, 43], 999_999), i),
         "quarantine", {"events": {"item_in_catalog": 4}}),
    Case("request_with_two_users", "one feed request logged for two users", _two_users_in_request,
         "quarantine", {"events": {"request_single_user": None}}),
    Case("no_request_ids", "a source without request ids (pages are cut from sessions)",
         lambda e, i: (e.assign(request_id=pd.array([pd.NA] * len(e), dtype="Int64")), i), "pass", {}),
    # Duplicates
    Case("duplicate_event_ids", "the same events twice, ids included", lambda e, i: (pd.concat([e, e.iloc[100:106]]), i),
         "quarantine", {"events": {"event_id_unique": 6, "event_duplicate": 6}}),
    Case("double_logging", "the same actions logged twice under new event ids", _double_logged,
         "quarantine", {"events": {"event_duplicate": 40}}),
    Case("double_logging_no_key", "double logging with validation.duplicate_key_columns empty (the check is off)",
         _double_logged, "pass", {}, ("validation.duplicate_key_columns=[]",)),
    # Time
    Case("null_timestamps", "events without a time", lambda e, i: (_set(e, "ts", [10, 11], pd.NaT), i),
         "quarantine", {"events": {"ts_not_null": 2}}),
    Case("ts_outside_month", "events from before the logged period", lambda e, i: (_set(e, "ts", [20, 21, 22],
         pd.Timestamp("2025-01-01", tz="UTC")), i), "quarantine", {"events": {"ts_in_period": 3}}),
    Case("ts_in_future", "events dated after now (a device clock ahead)", lambda e, i: (_set(e, "ts", [30, 31], FUTURE), i),
         "quarantine", {"events": {"ts_not_future": 2}}),
    Case("naive_timestamps", "timestamps without a zone (read as UTC, documented)",
         lambda e, i: (e.assign(ts=e["ts"].dt.tz_localize(None)), i), "pass", {}, verify=_same_instants),
    Case("zoned_timestamps", "timestamps in a local zone (America/New_York)",
         lambda e, i: (e.assign(ts=e["ts"].dt.tz_convert("America/New_York")), i), "pass", {}, verify=_same_instants),
    Case("millisecond_timestamps", "a timestamp column in milliseconds",
         lambda e, i: (pa.Table.from_pandas(e, preserve_index=False).set_column(
             list(e.columns).index("ts"), "ts", pa.array(e["ts"]).cast(pa.timestamp("ms", tz="UTC"), safe=False)), i),
         "pass", {}, verify=_same_instants),
    Case("epoch_seconds", "times as epoch seconds, source.ts_unit=s", _epoch("s"), "pass", {}, ("source.ts_unit=s",),
         "ingest", verify=_same_instants),
    Case("epoch_milliseconds", "times as epoch milliseconds, source.ts_unit=ms", _epoch("ms"), "pass", {},
         ("source.ts_unit=ms",), "ingest", verify=_same_instants),
    Case("epoch_microseconds", "times as epoch microseconds, source.ts_unit=us", _epoch("us"), "pass", {},
         ("source.ts_unit=us",), "ingest", verify=_same_instants),
    Case("iso_strings_with_offset", "ISO-8601 strings with offsets (+01:00/+02:00), source.ts_unit=iso8601",
         _utc_strings, "pass", {}, ("source.ts_unit=iso8601",), "ingest", verify=_same_instants),
    Case("epoch_without_unit", "epoch numbers and no source.ts_unit", _epoch("ms"), "error",
         "column 'ts' (type int64) holds numbers (its values look like epoch ms), not timestamps", (), "ingest"),
    Case("epoch_wrong_unit", "epoch milliseconds read as seconds (source.ts_unit=s)", _epoch("ms"), "error",
         "source.ts_unit=s, but the values look like epoch ms", ("source.ts_unit=s",), "ingest"),
    Case("strings_without_unit", "time strings and no source.ts_unit", _utc_strings, "error",
         "holds strings, not timestamps. To convert it, set source.ts_unit", (), "ingest"),
    Case("iso_without_offset", "ISO-8601 strings without an offset (which zone?)", _naive_strings, "error",
         "value(s) are not ISO-8601 times with a UTC offset (row 0:", ("source.ts_unit=iso8601",), "ingest"),
    Case("all_ts_null", "a log whose every time is null, no period set", lambda e, i: (e.assign(ts=pd.NaT), i), "error",
         "cannot tell the period the logs cover: every event's ts is null", (), "ingest"),
    Case("no_ts_no_period", "a log without a time column, no period set", lambda e, i: (e.drop(columns=["ts"]), i),
         "error", "cannot tell the period the logs cover: the events have no 'ts' column", (), "ingest"),
    # Volume: empty, broken loggers, automated traffic
    Case("empty_events", "an empty events file", lambda e, i: (e.iloc[:0], i), "stop", "'not_empty'"),
    Case("too_many_bad_rows", "20% of events with an unknown type", lambda e, i: (_set(e, "event_type", list(range(0, N, 5)), "view"), i),
         "stop", "fail row-level expectations ('event_type_known' on"),
    Case("clicks_without_exposure", "a broken exposure logger: clicks on items the request never showed",
         lambda e, i: (e[~((e.event_type == "expose") & (e.request_id % 3 == 0))], i), "stop", "'positive_has_exposure'"),
    Case("oversized_request", "one request with 1,200 exposures (a logging loop)", _bot_request(1200),
         "quarantine", {"events": {"request_oversized": None}}),
    Case("hyperactive_user_day", "a user-day above validation.max_events_per_user_day", lambda e, i: (e, i),
         "quarantine", {"events": {"user_day_hyperactive": None}},
         (f"validation.max_events_per_user_day={_busiest_user_day() - 1}",)),
    Case("automated_share_too_high", "automated traffic above validation.max_automated_fraction", _bot_request(3000),
         "stop", "look like automated traffic (top users:", ("validation.max_automated_fraction=0.1",)),
    # The catalog
    Case("non_utf8_title", "a title that is not valid UTF-8", _non_utf8_title, "quarantine", {"items": {"text_utf8": 1}}),
    Case("duplicate_item_ids", "an item listed twice", lambda e, i: (e, pd.concat([i, i.iloc[[5]]])),
         "quarantine", {"items": {"item_id_unique": 1}}),
    Case("null_catalog_id", "a catalog row without an item id", lambda e, i: (e, _nullable(i, "item_id", [_rare_item(e)])),
         "quarantine", {"items": {"item_id_not_null": 1}}),
    Case("negative_catalog_id", "a catalog item id below 0", lambda e, i: (e, _set(i, "item_id", [_rare_item(e)], -7)),
         "quarantine", {"items": {"item_id_non_negative": 1}}),
    Case("negative_price", "a price below 0", lambda e, i: (e, _set(i, "price", [9], -3.0)),
         "quarantine", {"items": {"price_non_negative": 1}}),
    Case("infinite_price", "a price of +inf", lambda e, i: _item_price(e, i, np.inf), "quarantine", {"items": {"numbers_finite": 1}}),
    Case("negative_infinite_price", "a price of -inf", lambda e, i: _item_price(e, i, -np.inf), "quarantine",
         {"items": {"numbers_finite": 1, "price_non_negative": 1}}),
    Case("nan_price", "a price that is NaN (not null)", lambda e, i: _item_price(e, i, np.nan), "quarantine",
         {"items": {"numbers_finite": 1}}),
    Case("empty_catalog", "an empty catalog", lambda e, i: (e, i.iloc[:0]), "stop", "items: expectation 'not_empty'"),
    Case("items_without_text", "items without title, description, category or brand",
         lambda e, i: (e, i.assign(title=None, description=None, category=None, brand=None)), "stop", "'has_text'"),
    # Files
    Case("unreadable_events", "events.parquet is not parquet", lambda e, i: (e, i), "error",
         "events.parquet: not a readable parquet file", files=lambda root: (root / "events.parquet").write_bytes(b"not parquet")),
    Case("truncated_events", "events.parquet cut short (a copy that stopped half-way)", lambda e, i: (e, i), "error",
         "events.parquet: not a readable parquet file", files=_truncate("events.parquet")),
    Case("corrupt_footer", "events.parquet with a corrupt footer", lambda e, i: (e, i), "error",
         "events.parquet: not a readable parquet file", files=_corrupt_footer),
    Case("truncated_items", "items.parquet cut short", lambda e, i: (e, i), "error",
         "items.parquet: not a readable parquet file", files=_truncate("items.parquet")),
    Case("missing_items_file", "no items.parquet", lambda e, i: (e, i), "error", "items.parquet not found",
         files=lambda root: (root / "items.parquet").unlink()),
    Case("missing_manifest", "the ingest folder lacks manifest.json", lambda e, i: (e, i), "error",
         "manifest.json not found", files=lambda root: (root / "manifest.json").unlink()),
]


BY_NAME = {c.name: c for c in CASES}


def write_folder(root: Path, events, items, manifest: bool = True) -> None:
    """An ingest-like folder: events.parquet, items.parquet and (unless told not to) manifest.json with the period."""
    import json

    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    for name, obj in (("events.parquet", events), ("items.parquet", items)):
        table = obj if isinstance(obj, pa.Table) else pa.Table.from_pandas(obj, preserve_index=False)
        pq.write_table(table, root / name)
    if manifest:
        (root / "manifest.json").write_text(json.dumps({"source": "test", "period_start": BASE.period_start.isoformat(),
                                                         "period_end": BASE.period_end.isoformat()}))


def outcome_text(case: Case) -> str:
    """The outcome as the README states it."""
    if case.outcome == "pass":
        return "accepted" + (" (times checked against the original)" if case.verify else "")
    if case.outcome in ("stop", "error"):
        where = "the stage stops" if case.outcome == "stop" else "a clear error"
        return f"{where}: \"{case.expected}...\""
    parts = [f"{check} ({'rows' if rows is None else rows})" for table in case.expected.values()
             for check, rows in table.items()]
    return "quarantined: " + ", ".join(parts)


def markdown() -> str:
    """The README's table of bad inputs, one row per case."""
    rows = ["| stage | input | config | outcome |", "|---|---|---|---|"]
    for c in CASES:
        config = ", ".join(f"`{o.split('=')[0]}`" for o in c.overrides) if c.overrides else ""
        rows.append(f"| {c.stage} | {c.what} | {config} | {outcome_text(c).replace('|', '/')} |")
    return "\n".join(rows) + "\n"


README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- BEGIN bad-inputs: generated by `make bad-inputs-doc` from tests/bad_input_corpus.py -->\n"
END = "<!-- END bad-inputs -->\n"


def readme_with_table(readme: str) -> str:
    """The README text with its bad-inputs section replaced by the current table."""
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + markdown() + END + tail


if __name__ == "__main__":  # make bad-inputs-doc
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else README
    path.write_text(readme_with_table(path.read_text()))
    print(f"{path}: {len(CASES)} kinds of bad input")
