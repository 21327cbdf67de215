"""Stage ingest: a source (the simulator, a dataset adapter or canonical parquet) -> canonical parquet.

Reads the source once, a batch at a time, and writes its tables under the stage's data folder
(<run.data_root>/<pipeline run id>/ingest/: events.parquet/, items.parquet/, optional pseudo_exposures.parquet/,
and for the simulator ground_truth.npz and optional images/). Into `out_dir` go the small things: manifest.json
(source, covered period, counts, the data folder), a reference per table (genrec.data.tables) and, for the
simulator, ground_truth.json. Memory holds a batch of events (for the simulator: a chunk of requests and the
simulated world), not the log. Nothing is validated here: that is the next stage's job, so a broken source reaches
validation intact and is reported there.
"""

from __future__ import annotations

import json
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from genrec import plots, stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data import tables
from genrec.data.io import copy_tree, is_object_store, scan_parquet
from genrec.data.schema import EVENTS_FILE, ITEMS_FILE, MANIFEST_FILE, PSEUDO_EXPOSURES_FILE
from genrec.data.timestamps import canonical_ts
from genrec.errors import InputDataError


def _day(d) -> datetime:
    return datetime.combine(d, time(), tzinfo=timezone.utc)


class EventSink:
    """Writes event batches with `ts` made canonical, and keeps what ingest reports of them: rows, the first and
    last time, events per day, the columns seen."""

    def __init__(self, uri: str, ts_unit: str):
        self.writer = tables.PartWriter(uri)
        self.ts_unit = ts_unit
        self.lo = self.hi = None
        self.per_day: dict[str, int] = {}
        self.columns: list[str] = []

    def write(self, batch: pa.Table | pa.RecordBatch) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        table = canonical_ts(table, self.ts_unit, EVENTS_FILE, first_row=self.writer.n_rows)
        self.columns = table.column_names
        if "ts" in table.column_names and pa.types.is_timestamp(table.schema.field("ts").type) and table.num_rows:
            ts = table.column("ts").cast(pa.timestamp("us", tz="UTC"))
            lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
            if lo is not None:
                self.lo = lo if self.lo is None else min(self.lo, lo)
                self.hi = hi if self.hi is None else max(self.hi, hi)
                days = pc.value_counts(pc.floor_temporal(ts, unit="day")).to_pylist()
                for r in days:
                    if r["values"] is not None:
                        key = r["values"].strftime("%Y-%m-%d")
                        self.per_day[key] = self.per_day.get(key, 0) + r["counts"]
        self.writer.write(table)

    def period(self, cfg: PipelineConfig, known: tuple[datetime, datetime] | None) -> tuple[datetime, datetime]:
        """The period the logs cover: the config's, else the source's own, else the days of the first and last
        event."""
        start = _day(cfg.source.period_start) if cfg.source.period_start else None
        end = _day(cfg.source.period_end) if cfg.source.period_end else None
        if known:
            start, end = start or known[0], end or known[1]
        if (start is None or end is None) and self.lo is not None:
            start = start or _day(self.lo.date())
            end = end or _day(self.hi.date()) + timedelta(days=1)
        if start is None or end is None:
            if "ts" not in self.columns:
                cause = f"the events have no 'ts' column (they have: {', '.join(self.columns) or 'none'})"
            elif self.writer.n_rows == 0:
                cause = "the events table is empty"
            else:
                cause = "every event's ts is null"
            raise InputDataError(f"cannot tell the period the logs cover: {cause}. Fix the log, or set "
                                 f"source.period_start and source.period_end")
        return start, end


def _simulate(cfg: PipelineConfig, data: str, out_dir: Path, sink: EventSink) -> dict:
    """Draw the month chunk by chunk into the sink; returns what the manifest says of the simulation."""
    from genrec.data import simulator

    if is_object_store(data):
        raise InputDataError("source.kind=simulator writes its ground truth and images as local files: run.data_root "
                             "must be a local folder for it (simulate locally, then use source.kind=parquet)")
    month = simulator.plan_month(cfg.simulator, cfg.run.seed)
    month.truth.save(Path(data) / simulator.GROUND_TRUTH_FILE)
    simulator.save_truth_summary(out_dir / "ground_truth.json", cfg.simulator)
    items = month.items
    if cfg.simulator.images:
        items = simulator.write_images(items, Path(data), cfg.simulator, month.truth, cfg.run.seed)
    _write_items(items, data)
    pseudo = tables.PartWriter(tables.join(data, PSEUDO_EXPOSURES_FILE)) if cfg.simulator.pseudo_exposures else None
    counts = {t: 0 for t in ("expose", "click", "cart", "order")}
    for events, side in month.chunks():
        for k, v in simulator.count_event_types(events).items():
            counts[k] += v
        sink.write(events)
        if pseudo is not None:
            pseudo.write(side)
    simulation = simulator.describe(counts, items.num_rows)
    if pseudo is not None:
        simulation["pseudo_exposures"] = pseudo.close()
    return {"period": (month.period_start, month.period_end), "simulation": simulation}


def _write_items(items: pa.Table, data: str) -> int:
    writer = tables.PartWriter(tables.join(data, ITEMS_FILE))
    writer.write(items)
    return writer.close()


def _read_source(cfg: PipelineConfig, data: str, sink: EventSink) -> dict:
    """A dataset adapter or canonical parquet into the sink and the items table."""
    kind = cfg.source.kind
    if not cfg.source.path:
        raise InputDataError(f"source.kind={kind} needs source.path (the dataset folder)")
    if is_object_store(cfg.source.path) and kind != "parquet":
        raise InputDataError(f"source.path={cfg.source.path}: only source.kind=parquet reads from an object store")
    if kind in ("movielens", "amazon_beauty"):  # small public datasets: read whole, written like the rest
        if kind == "movielens":
            from genrec.data.movielens import load_movielens as load
        else:
            from genrec.data.amazon_beauty import load_amazon_beauty as load
        events, items = load(Path(cfg.source.path))
        sink.write(events)
        _write_items(items, data)
        return {}
    base = cfg.source.path.rstrip("/")
    hint = f"source.kind=parquet needs {EVENTS_FILE} and {ITEMS_FILE} in source.path"
    # Both opened before anything is read: a source without its catalog fails before the month is read.
    _, event_batches = scan_parquet(f"{base}/{EVENTS_FILE}", hint)
    _, item_batches = scan_parquet(f"{base}/{ITEMS_FILE}", hint)
    items = tables.PartWriter(tables.join(data, ITEMS_FILE))
    for batch in item_batches:
        items.write(batch)
    items.close()
    for batch in event_batches:
        sink.write(batch)
    if not is_object_store(base) and (Path(base) / "images").is_dir():
        copy_tree(Path(base) / "images", tables.join(data, "images"))
    return {}


def run_ingest(cfg: PipelineConfig, out_dir: str | Path, pipeline_run_id: str) -> dict:
    """Read the configured source once and write canonical events and items under the data root; returns the
    manifest."""
    out_dir = stage_outputs.begin(out_dir, "ingest", pipeline_run_id, {})
    data = tables.fresh_data_dir(cfg, "ingest", pipeline_run_id)
    with tracking.stage_run(cfg, "ingest", pipeline_run_id) as track:
        track.params({"source": cfg.source.model_dump(mode="json")})
        if cfg.source.kind == "simulator":
            track.params({"simulator": cfg.simulator.model_dump(mode="json")})
        sink = EventSink(tables.join(data, EVENTS_FILE), cfg.source.ts_unit)
        extra = _simulate(cfg, data, out_dir, sink) if cfg.source.kind == "simulator" else _read_source(cfg, data, sink)
        sink.writer.close()
        start, end = sink.period(cfg, extra.get("period"))
        refs = {name: tables.record(out_dir, name, tables.join(data, name), written_by="ingest")
                for name in (EVENTS_FILE, ITEMS_FILE, PSEUDO_EXPOSURES_FILE) if tables.is_table(tables.join(data, name))}
        manifest = {
            "source": cfg.source.kind,
            "source_path": cfg.source.path,
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
            "n_events": refs[EVENTS_FILE].n_rows,
            "n_items": refs[ITEMS_FILE].n_rows,
            "data_dir": data,
            "created_at": datetime.now(timezone.utc).isoformat(),
            **({"simulation": extra["simulation"]} if "simulation" in extra else {}),
        }
        (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        track.metrics({"n_events": manifest["n_events"], "n_items": manifest["n_items"]})
        if "simulation" in extra:
            track.metrics({f"sim_{k}": v for k, v in extra["simulation"].items()})
        track.json(manifest, "manifest.json")
        track.table(refs[EVENTS_FILE], "events_raw", "output")
        if sink.per_day:
            days = sorted(sink.per_day)
            fig = plots.bar(days, [sink.per_day[d] for d in days], "Events per day", "day", "events")
            track.figure(fig, "plots/events_per_day.png")
            plots.close(fig)
    stage_outputs.complete(out_dir)
    return manifest
