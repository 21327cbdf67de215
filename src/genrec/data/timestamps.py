"""Event times written as numbers or strings -> the canonical UTC timestamp, when the user says how they are written.

A number could be seconds, milliseconds or microseconds, and a string without an offset could be in any zone: a
guess would shift every event, so ingest converts only with `source.ts_unit` set and refuses otherwise, naming the
column, its type and the option.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa

from genrec.errors import InputDataError

TS_TYPE = pa.timestamp("us", tz="UTC")
_US_PER = {"s": 1_000_000, "ms": 1_000, "us": 1}
# Epoch values of the years 2001-2286 in each unit: a median outside its unit's range says the unit is wrong.
_PLAUSIBLE = {"s": (1e9, 1e10), "ms": (1e12, 1e13), "us": (1e15, 1e16)}
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)
OPTION = ("set source.ts_unit to s, ms or us (numbers: seconds, milliseconds or microseconds since 1970-01-01 UTC) "
          "or iso8601 (strings with a UTC offset)")


def _looks_like(median: float) -> str | None:
    for unit, (lo, hi) in _PLAUSIBLE.items():
        if lo <= median < hi:
            return unit
    return None


def _from_numbers(col: pa.ChunkedArray, unit: str, where: str) -> pa.Array:
    values = col.to_numpy(zero_copy_only=False).astype("float64")  # nulls -> NaN
    finite = np.isfinite(values)
    if finite.any():
        median = float(np.median(np.abs(values[finite])))
        guess = _looks_like(median)
        if guess != unit:
            seen = f"epoch {guess}" if guess else "no epoch unit of the years 2001-2286"
            raise InputDataError(f"{where}: source.ts_unit={unit}, but the values look like {seen} (median "
                                 f"{median:.4g}): set source.ts_unit to the unit the log is written in")
    micros = np.where(finite, np.round(values * _US_PER[unit]), 0).astype("int64")
    return pa.array(micros, pa.int64(), mask=~finite).cast(TS_TYPE)  # NaN or inf -> null: quarantined as ts_not_null


def _from_iso(col: pa.ChunkedArray, where: str, first_row: int) -> pa.Array:
    text = pd.Series(col.to_pylist(), dtype="object")
    present = text.notna()
    stripped = text[present].str.strip()
    has_offset = stripped.str.contains(_OFFSET)
    parsed = pd.to_datetime(stripped.where(has_offset), format="ISO8601", utc=True, errors="coerce")
    bad = stripped.index[~has_offset | parsed.isna()]
    if len(bad):
        examples = "; ".join(f"row {first_row + i}: {text[i]!r}" for i in bad[:5])
        raise InputDataError(f"{where}: {len(bad):,} value(s) are not ISO-8601 times with a UTC offset ({examples}). "
                             f"A time without an offset is ambiguous (which zone?): write the offset, e.g. "
                             f"2026-10-01T08:00:00+02:00 or ...Z")
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    out[present] = parsed.astype("datetime64[us, UTC]")
    return pa.Array.from_pandas(out, type=TS_TYPE)


def canonical_ts(events: pa.Table, ts_unit: str, name: str = "events", first_row: int = 0) -> pa.Table:
    """Return events with `ts` as a UTC timestamp, converting numbers or strings as `ts_unit` says. `events` may be
    one batch of a larger table whose first row is row `first_row` (errors name rows of the whole table).

    A timestamp column passes unchanged (validation reads a naive one as UTC); a missing column is left for
    validation to report. Raises InputDataError for numbers or strings without a matching ts_unit.
    """
    if "ts" not in events.column_names:
        return events
    col = events.column("ts")
    where = f"{name}: column 'ts' (type {col.type})"
    if pa.types.is_timestamp(col.type):
        return events
    numeric = pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
    text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    if numeric and ts_unit in _US_PER:
        ts = _from_numbers(col, ts_unit, where)
    elif text and ts_unit == "iso8601":
        ts = _from_iso(col, where, first_row)
    else:
        if numeric:
            finite = col.to_numpy(zero_copy_only=False).astype("float64")
            finite = finite[np.isfinite(finite)]
            guess = _looks_like(float(np.median(np.abs(finite)))) if len(finite) else None
            hint = f" (its values look like epoch {guess})" if guess else ""
            what = f"holds numbers{hint}"
        elif text:
            what = "holds strings"
        else:
            what = "is neither a timestamp, numbers nor strings"
        now = f" source.ts_unit={ts_unit} does not fit it." if ts_unit else ""
        raise InputDataError(f"{where} {what}, not timestamps.{now} To convert it, {OPTION}")
    return events.set_column(events.schema.get_field_index("ts"), "ts", ts)
