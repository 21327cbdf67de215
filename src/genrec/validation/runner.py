"""Runs checks through Great Expectations (results + Data Docs) and splits rows into clean and quarantined.

Row-level validation runs on Spark (`validate_rows`): the rows with one flag per check are written once, Great
Expectations validates that Spark DataFrame, one aggregation counts each check's failing rows, and the clean and the
quarantined rows are written from it. Memory does not grow with the table. Table-level checks of small pandas
tables (the SID table) go through `check_table`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from genrec import stage_outputs
from genrec.data import tables
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
    checked_by: str = "great_expectations"  # or "spark": a row rule counted in one pass (genrec.validation.checks)


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
        self._sources = {}

    def _source(self, kind: str):
        if kind not in self._sources:
            add = (self.context.data_sources.add_or_update_pandas if kind == "pandas"
                   else self.context.data_sources.add_or_update_spark)
            self._sources[kind] = add("genrec" if kind == "pandas" else "genrec_spark")
        return self._sources[kind]

    def validate(self, df, table: str, checks: list[Check], run_name: str | None = None) -> list[CheckResult]:
        """Run the checks as one suite on a pandas or a Spark DataFrame; the Data Docs list the run under `run_name`
        (the pipeline run)."""
        from great_expectations.core.run_identifier import RunIdentifier

        gx = self._gx
        source = self._source("pandas" if isinstance(df, pd.DataFrame) else "spark")
        try:
            asset = source.get_asset(table)
        except LookupError:
            asset = source.add_dataframe_asset(name=table)
        try:
            batch_def = asset.get_batch_definition("whole")
        except (KeyError, LookupError):
            batch_def = asset.add_batch_definition_whole_dataframe("whole")
        suite = gx.ExpectationSuite(name=table, expectations=[c.expectation for c in checks])
        suite = self.context.suites.add_or_update(suite)
        vd = self.context.validation_definitions.add_or_update(gx.ValidationDefinition(name=f"{table}_validation", data=batch_def, suite=suite))
        # No Data Docs action: the site is built once per stage (publish_docs), not once per table.
        cp = self.context.checkpoints.add_or_update(gx.Checkpoint(
            name=f"{table}_checkpoint", validation_definitions=[vd], actions=[],
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
                out.append(CheckResult(check.name, check.description, "table", bool(r.success),
                                       res.get("unexpected_count"), res.get("element_count"),
                                       None if observed is None else str(observed)[:200], err))
        return out

    @property
    def docs_index(self) -> Path:
        return Path(self.context.root_directory) / "uncommitted" / "data_docs" / "local_site" / "index.html"

    def publish_docs(self, stopped: bool) -> Path:
        """Build the Data Docs site from every validation of this project; returns where a reader finds it: in the
        stage's output folder once it completes, or, when the stage stops, in the work folder it stopped in
        (stage_outputs)."""
        self.context.build_data_docs()
        return self.docs_index if stopped else stage_outputs.final_path(self.docs_index)


def check_table(project: GxProject, df: pd.DataFrame, table: str, checks: list[Check], report: TableValidation,
                run_name: str | None = None) -> None:
    """Validate a small pandas table against table-level checks (the SID table): results into `report`."""
    if any(c.bad_rows for c in checks):
        raise ValueError(f"{table}: check_table runs table-level checks; row-level ones need validate_rows (Spark)")
    report.results = project.validate(df, table, checks, run_name)


def validate_rows(project: GxProject, df, table: str, checks: list[Check], report: TableValidation, data: str,
                  name: str, columns: list[str], run_name: str | None = None,
                  partition_by: tuple[str, ...] = ()) -> dict[str, str]:
    """Validate a Spark DataFrame (with the derived columns its checks read) and split it: rows that fail a row-level
    check, with every column and a `quarantine_reason` naming each check they fail, go to <data>/quarantine/<name>;
    the others, with `columns`, to <data>/<name> (hive-partitioned by `partition_by`). Table-level checks run through
    Great Expectations. Results and counts go into `report`; returns the two tables' URIs.

    Three passes over the table, each holding a partition at a time: the quarantine is written (the failing rows;
    every count is then an aggregation of that small table), GE reads the columns of the table-level checks, the
    clean rows are written.
    """
    from pyspark.sql import functions as F

    spark = df.sparkSession
    row_checks = [c for c in checks if c.bad_rows is not None]
    table_checks = [c for c in checks if c.expectation is not None]

    rules = {c.name: F.coalesce(c.bad_rows(), F.lit(False)) for c in row_checks}  # built once: each is JVM calls

    def fails(check):
        return rules[check.name]

    bad = _any([fails(c) for c in row_checks])
    clean_uri, quarantine_uri = tables.join(data, name), tables.join(data, "quarantine", name)
    reason = F.concat_ws(",", *[F.when(fails(c), F.lit(c.name)) for c in row_checks])
    df.where(bad).withColumn("quarantine_reason", reason).write.mode("overwrite").parquet(tables.spark_uri(quarantine_uri))

    quarantined = spark.read.parquet(tables.spark_uri(quarantine_uri))
    defective = _any([fails(c) for c in row_checks if not c.automated])
    automated = _any([fails(c) for c in row_checks if c.automated])
    counts = quarantined.agg(F.count(F.lit(1)).alias("_bad"), F.sum(defective.cast("long")).alias("_defective"),
                             F.sum(automated.cast("long")).alias("_automated"),
                             *[F.sum(fails(c).cast("long")).alias(c.name) for c in row_checks]).collect()[0]
    report.quarantine_by_check = {c.name: int(counts[c.name] or 0) for c in row_checks}
    report.rows_quarantined = int(counts["_bad"])
    report.rows_defective, report.rows_automated = int(counts["_defective"] or 0), int(counts["_automated"] or 0)
    if report.rows_automated and "user_id" in df.columns:
        report.automated_users = automated_users(quarantined.where(automated))

    needed = sorted({c.expectation.column for c in table_checks if getattr(c.expectation, "column", None)})
    ge = project.validate(df.select(*(needed or df.columns[:1])), table, table_checks, run_name) if table_checks else []
    spark_results = [CheckResult(c.name, c.description, "row", report.quarantine_by_check[c.name] == 0,
                                 report.quarantine_by_check[c.name], report.rows_in, checked_by="spark")
                     for c in row_checks]
    report.results = ge + spark_results

    df.where(~bad).select(*columns).write.mode("overwrite").partitionBy(*partition_by).parquet(
        tables.spark_uri(clean_uri))
    spark.catalog.clearCache()  # the small aggregates the derived columns kept (checks.mark_first and the like)
    return {"clean": clean_uri, "quarantine": quarantine_uri}


def _any(flags: list):
    from pyspark.sql import functions as F

    out = F.lit(False)
    for flag in flags:
        out = out | flag
    return out


def automated_users(rows, top: int = 50) -> list[dict]:
    """Who is behind the traffic quarantined as automated: per user, events, requests and days, most events first
    (rows: a Spark DataFrame of events)."""
    from pyspark.sql import functions as F

    per_user = (rows.groupBy("user_id")
                .agg(F.count(F.lit(1)).alias("events"), F.countDistinct("request_id").alias("requests"),
                     F.countDistinct(F.date_trunc("day", "ts")).alias("days"))
                .orderBy(F.col("events").desc(), F.col("user_id").asc_nulls_last()).limit(top).collect())
    return [{"user_id": None if r["user_id"] is None else int(r["user_id"]), "events": int(r["events"]),
             "requests": int(r["requests"]), "days": int(r["days"])} for r in per_user]
