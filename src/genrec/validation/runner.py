"""Runs checks through Great Expectations (results + Data Docs) and splits rows into clean and quarantined."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from genrec import stage_outputs
from genrec.validation.checks import Check


@dataclass
class CheckResult:
    name: str
    description: str
    level: str  # "row" (failing rows are quarantined) or "table" (a failure stops the pipeline)
    success: bool
    unexpected_count: int | None = None
    element_count: int | None = None
    observed: str | None = None
    error: str | None = None


@dataclass
class TableValidation:
    table: str
    rows_in: int
    schema_problems: list[str] = field(default_factory=list)
    results: list[CheckResult] = field(default_factory=list)
    rows_quarantined: int = 0
    quarantine_by_check: dict[str, int] = field(default_factory=dict)
    rows_automated: int = 0  # rows quarantined by an automated-traffic check (some may fail other checks too)
    rows_defective: int = 0  # rows quarantined by any other check
    automated_users: list[dict] = field(default_factory=list)  # the users behind the automated traffic, most first

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.rows_quarantined

    def as_dict(self) -> dict:
        return {**asdict(self), "rows_out": self.rows_out}


# -- Arrow-level schema: exact types, before anything is converted -------------------------------------------


@dataclass
class Conformed:
    """A table cast to the canonical schema (None when it cannot be), and per-row facts found on the way."""

    table: pa.Table | None
    problems: list[str]
    utf8_ok: np.ndarray  # False: a binary text value did not decode as UTF-8 (it is null now)
    finite: np.ndarray  # False: a numeric value was NaN or +-inf (null now where the column holds integers)


def _non_finite(col: pa.ChunkedArray) -> np.ndarray:
    """True where a floating-point value is NaN or +-inf (nulls are not: a missing value is allowed)."""
    if not pa.types.is_floating(col.type):
        return np.zeros(len(col), dtype=bool)
    finite = pc.is_finite(col)
    return ~np.asarray(finite.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)


def conform(table: pa.Table, schema: pa.Schema, name: str, text_columns: tuple[str, ...] = ()) -> Conformed:
    """Cast a table to the canonical schema where that loses nothing.

    Binary text columns are decoded (undecodable values become null, the row is flagged in utf8_ok). NaN and +-inf
    are a row-level fault, not a reason to refuse the table: they are flagged in `finite`, and where the column holds
    integers (ids written as floats) they become null, since an integer cannot hold them.
    """
    problems = []
    missing = [f.name for f in schema if f.name not in table.column_names]
    for col in missing:
        problems.append(f"{name}: required column '{col}' is missing (has: {', '.join(table.column_names) or 'none'})")
    utf8_ok = np.ones(table.num_rows, dtype=bool)
    finite = np.ones(table.num_rows, dtype=bool)
    for f in schema:
        if f.name in missing:
            continue
        col = table.column(f.name)
        if (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)) and pa.types.is_floating(col.type):
            bad = _non_finite(col)
            if bad.any():
                finite &= ~bad
                if pa.types.is_integer(f.type):
                    col = pc.if_else(pa.array(bad), pa.scalar(None, col.type), col)
        if f.name in text_columns and (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
            values = []
            for i, raw in enumerate(col.to_pylist()):
                try:
                    values.append(None if raw is None else raw.decode("utf-8"))
                except UnicodeDecodeError:
                    values.append(None)
                    utf8_ok[i] = False
            col = pa.chunked_array([pa.array(values, pa.string())])
        elif pa.types.is_timestamp(f.type) and pa.types.is_timestamp(col.type):
            # Any unit; a naive timestamp is read as UTC (documented), a zoned one converted to UTC.
            col = col.cast(pa.timestamp("us", tz=col.type.tz or "UTC")).cast(f.type)
        elif col.type != f.type:
            if pa.types.is_null(col.type):
                col = pa.nulls(len(col), f.type)
            else:
                # Widening, and floats holding whole numbers (pandas writes nullable ids as float): a cast
                # that would lose information fails below with a message naming the column.
                ok_cast = (pa.types.is_integer(col.type) and pa.types.is_integer(f.type)) or \
                          (pa.types.is_floating(col.type) and pa.types.is_integer(f.type)) or \
                          (pa.types.is_integer(col.type) and pa.types.is_floating(f.type)) or \
                          (pa.types.is_floating(col.type) and pa.types.is_floating(f.type)) or \
                          (pa.types.is_large_string(col.type) and pa.types.is_string(f.type)) or \
                          (pa.types.is_dictionary(col.type) and pa.types.is_string(f.type))
                if not ok_cast:
                    hint = " (set source.ts_unit and rerun ingest)" if f.name == "ts" else ""
                    problems.append(f"{name}: column '{f.name}' has type {col.type}, expected {f.type}{hint}")
                    continue
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    problems.append(f"{name}: column '{f.name}' cannot be read as {f.type}: {exc}")
                    continue
        table = table.set_column(table.schema.get_field_index(f.name), f.name, col)
    if problems:
        return Conformed(None, problems, utf8_ok, finite)
    # Nulls in required columns are a row-level fault (quarantined later), not a reason to refuse the table.
    nullable = pa.schema([f.with_nullable(True) for f in schema])
    return Conformed(table.select([f.name for f in schema]).cast(nullable), problems, utf8_ok, finite)


def to_frame(table: pa.Table) -> pd.DataFrame:
    """pandas frame with nullable integer dtypes (a null id stays an id column, not a float column)."""
    mapping = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}
    return table.to_pandas(types_mapper=mapping.get)


# -- Great Expectations ----------------------------------------------------------------------------------------


class GxProject:
    """A file-backed GE project in root/gx: suites, validation results and the Data Docs site."""

    def __init__(self, root: Path):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        root.mkdir(parents=True, exist_ok=True)
        self.context = gx.get_context(mode="file", project_root_dir=str(root))
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.context.variables.save()
        self.source = self.context.data_sources.add_or_update_pandas("genrec")

    def validate(self, df: pd.DataFrame, table: str, checks: list[Check], run_name: str | None = None) -> list[CheckResult]:
        """Run the checks as one suite; the Data Docs list the run under `run_name` (the pipeline run)."""
        from great_expectations.core.run_identifier import RunIdentifier

        gx = self._gx
        try:
            asset = self.source.get_asset(table)
        except LookupError:
            asset = self.source.add_dataframe_asset(name=table)
        try:
            batch_def = asset.get_batch_definition("whole")
        except (KeyError, LookupError):
            batch_def = asset.add_batch_definition_whole_dataframe("whole")
        suite = gx.ExpectationSuite(name=table, expectations=[c.expectation for c in checks])
        suite = self.context.suites.add_or_update(suite)
        vd = self.context.validation_definitions.add_or_update(gx.ValidationDefinition(name=f"{table}_validation", data=batch_def, suite=suite))
        cp = self.context.checkpoints.add_or_update(gx.Checkpoint(
            name=f"{table}_checkpoint", validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format={"result_format": "SUMMARY"}))
        result = cp.run(batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=run_name))
        by_name = {c.name: c for c in checks}
        out = []
        for vr in result.run_results.values():
            for r in vr.results:
                check = by_name[r.expectation_config.meta["check"]]
                res = r.result or {}
                observed = res.get("observed_value")
                err = r.exception_info.get("exception_message") if r.exception_info and r.exception_info.get("raised_exception") else None
                out.append(CheckResult(check.name, check.description, "row" if check.bad_rows else "table", bool(r.success),
                                       res.get("unexpected_count"), res.get("element_count"),
                                       None if observed is None else str(observed)[:200], err))
        return out

    @property
    def docs_index(self) -> Path:
        return Path(self.context.root_directory) / "uncommitted" / "data_docs" / "local_site" / "index.html"

    def docs_path(self, stopped: bool) -> Path:
        """Where a reader finds the Data Docs: in the stage's output folder once it completes, or, when the stage
        stops, in the work folder it stopped in (stage_outputs)."""
        return self.docs_index if stopped else stage_outputs.final_path(self.docs_index)


def check_table(project: GxProject, df: pd.DataFrame, table: str, checks: list[Check], report: TableValidation,
                run_name: str | None = None) -> np.ndarray:
    """Validate df with GE and return the quarantine mask (True: the row fails a row-level check)."""
    report.results = project.validate(df, table, checks, run_name)
    defective = np.zeros(len(df), dtype=bool)
    automated = np.zeros(len(df), dtype=bool)
    failed = {r.name for r in report.results if not r.success}
    for check in checks:
        if check.bad_rows is None:
            continue
        report.quarantine_by_check[check.name] = 0  # every row-level check reports a count: stable metric names
        if check.name not in failed:
            continue
        mask = np.asarray(check.bad_rows(df), dtype=bool)
        report.quarantine_by_check[check.name] = int(mask.sum())
        if check.automated:
            automated |= mask
        else:
            defective |= mask
    bad = defective | automated
    report.rows_quarantined, report.rows_defective, report.rows_automated = int(bad.sum()), int(defective.sum()), int(automated.sum())
    if automated.any() and "user_id" in df.columns:
        report.automated_users = automated_users(df[automated])
    return bad


def automated_users(rows: pd.DataFrame, top: int = 50) -> list[dict]:
    """Who is behind the traffic quarantined as automated: per user, events, requests and days, most events first."""
    per_user = rows.groupby("user_id", dropna=False).agg(events=("user_id", "size"),
                                                         requests=("request_id", "nunique"),
                                                         days=("ts", lambda t: t.dt.floor("D").nunique()))
    per_user = per_user.sort_values("events", ascending=False).head(top).reset_index()
    return [{"user_id": None if pd.isna(r.user_id) else int(r.user_id), "events": int(r.events),
             "requests": int(r.requests), "days": int(r.days)} for r in per_user.itertuples()]


def quarantine_frame(df: pd.DataFrame, bad: np.ndarray, checks: list[Check]) -> pd.DataFrame:
    """The quarantined rows with a `quarantine_reason` column naming every check each row failed.

    Masks are evaluated on the whole table: some rules (duplicates, one user per request) depend on other rows.
    """
    reasons = np.full(len(df), "", dtype=object)
    for check in checks:
        if check.bad_rows is None or not bad.any():
            continue
        mask = np.asarray(check.bad_rows(df), dtype=bool) & bad
        reasons[mask] = [f"{r},{check.name}" if r else check.name for r in reasons[mask]]
    rows = df[bad].copy()
    rows["quarantine_reason"] = reasons[bad]
    return rows
