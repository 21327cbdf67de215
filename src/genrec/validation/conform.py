"""A table as its source wrote it -> the canonical schema, on Spark, losing nothing silently.

The decisions come from the parquet files' own (Arrow) schema, read from their footers: a column that is missing or
of a type that cannot stand for the canonical one refuses the table with one line naming the column. A cast that
would lose information (a fraction in an id, a number too large for int32) refuses it too; that takes one scan of the
columns concerned, and only when their type is not the canonical one. What is wrong with single rows is kept as
flags for the row checks: NaN or +-inf in a number (`numbers_finite`; in an integer column such as an id the value
becomes null), text that is not UTF-8 (`text_utf8`; the value becomes null).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

INT_RANGE = {pa.int32(): (-(2**31), 2**31 - 1), pa.int64(): (-(2**63), 2**63 - 1)}
SPARK_TYPE = {pa.int64(): "bigint", pa.int32(): "int", pa.float64(): "double", pa.string(): "string",
              pa.timestamp("us", tz="UTC"): "timestamp"}


@dataclass
class Conformed:
    """The table in the canonical schema (None when it cannot be), with the flag columns `numbers_finite` and
    `text_utf8`, and the reasons it cannot be."""

    df: DataFrame | None
    problems: list[str]


def _plain(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether a column of type `source` may stand for `target` (widening, floats holding whole numbers, text
    encodings); the values are checked by the cast."""
    s = _plain(source)
    if pa.types.is_integer(target):
        return pa.types.is_integer(s) or pa.types.is_floating(s)
    if pa.types.is_floating(target):
        return pa.types.is_integer(s) or pa.types.is_floating(s)
    if pa.types.is_string(target):
        return pa.types.is_string(s) or pa.types.is_large_string(s)
    return False


def conform(df: DataFrame, source: pa.Schema, schema: pa.Schema, name: str,
            text_columns: tuple[str, ...] = ()) -> Conformed:
    """Cast df (read from parquet whose Arrow schema is `source`) to `schema`; see the module's docstring."""
    problems = [f"{name}: required column '{f.name}' is missing (has: {', '.join(source.names) or 'none'})"
                for f in schema if f.name not in source.names]
    finite: list[Column] = []
    utf8: list[Column] = []
    columns: dict[str, Column] = {}
    exact: list[tuple[str, pa.DataType]] = []  # casts whose values must be checked
    for f in schema:
        if f.name not in source.names:
            continue
        src = source.field(f.name).type
        col = F.col(f"`{f.name}`")
        if pa.types.is_null(src):
            columns[f.name] = F.lit(None).cast(SPARK_TYPE[f.type])
        elif pa.types.is_timestamp(f.type):
            if pa.types.is_timestamp(src) and src.unit == "ns":  # read as nanoseconds since 1970 (session.py)
                columns[f.name] = F.timestamp_micros(F.floor(col / 1000).cast("bigint"))
            elif pa.types.is_timestamp(src) or pa.types.is_date(src):
                columns[f.name] = col.cast("timestamp")  # a naive time is read as UTC (the session's zone)
            else:
                problems.append(f"{name}: column '{f.name}' has type {src}, expected {f.type} (set source.ts_unit "
                                f"and rerun ingest)")
        elif f.name in text_columns and (pa.types.is_binary(src) or pa.types.is_large_binary(src)):
            text = col.cast("string")  # the bytes as they are, checked next
            ok = col.isNull() | F.is_valid_utf8(text)
            utf8.append(ok)
            columns[f.name] = F.when(ok, text)
        elif not _castable(src, f.type):
            problems.append(f"{name}: column '{f.name}' has type {src}, expected {f.type}")
        else:
            plain = _plain(src)
            if pa.types.is_floating(plain):
                ok = col.isNull() | ~(F.isnan(col) | col.isin(float("inf"), float("-inf")))
                finite.append(ok)
                if pa.types.is_integer(f.type):  # an integer cannot hold NaN or inf: null (a float keeps it)
                    col = F.when(ok, col)
            if pa.types.is_integer(f.type) and (pa.types.is_floating(plain) or not _fits(plain, f.type)):
                exact.append((f.name, plain))
            columns[f.name] = col.cast(SPARK_TYPE[f.type])
    if problems:
        return Conformed(None, problems)
    problems = _lossy_casts(df, exact, schema, name)
    if problems:
        return Conformed(None, problems)
    flags = [F.coalesce(c, F.lit(True)) for c in finite]
    text_ok = [F.coalesce(c, F.lit(True)) for c in utf8]
    out = df.select(*[columns[f.name].alias(f.name) for f in schema],
                    (_all(flags)).alias("numbers_finite"), (_all(text_ok)).alias("text_utf8"))
    return Conformed(out, [])


def _all(flags: list[Column]) -> Column:
    out = F.lit(True)
    for flag in flags:
        out = out & flag
    return out


def _fits(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether every value of integer type `source` fits integer type `target`."""
    if pa.types.is_unsigned_integer(source):
        return source.bit_width < target.bit_width
    return source.bit_width <= target.bit_width


def _lossy_casts(df: DataFrame, exact: list[tuple[str, pa.DataType]], schema: pa.Schema, name: str) -> list[str]:
    """One scan: values of the columns in `exact` that their canonical integer type cannot hold (a fraction, out of
    range); a line per column that has any, with an example."""
    if not exact:
        return []
    aggs = []
    for col_name, src in exact:
        lo, hi = INT_RANGE[schema.field(col_name).type]
        col = F.col(f"`{col_name}`")
        if pa.types.is_floating(src):
            finite = ~(F.isnan(col) | col.isin(float("inf"), float("-inf")))
            bad = col.isNotNull() & finite & ((col != F.floor(col)) | (col < lo) | (col > hi))
        else:
            bad = col.isNotNull() & ((col < F.lit(lo)) | (col > F.lit(hi)))
        aggs += [F.sum(F.when(bad, 1).otherwise(0)).alias(f"n_{col_name}"),
                 F.min(F.when(bad, col)).alias(f"e_{col_name}")]
    row = df.agg(*aggs).collect()[0]
    return [f"{name}: column '{c}' cannot be read as {schema.field(c).type}: {row[f'n_{c}']:,} value(s) are not "
            f"whole numbers in its range (e.g. {row[f'e_{c}']})" for c, _ in exact if row[f"n_{c}"]]
