"""Stage ingest: a source (the simulator, a dataset adapter or canonical parquet) -> canonical parquet.

Writes into `out_dir`: events.parquet, items.parquet, manifest.json (source, covered period, counts)
and, for the simulator, ground_truth.npz, optional images/ and optional pseudo_exposures.parquet. Nothing is validated here: that is
the next stage's job, so a broken source reaches validation intact and is reported there.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec import plots, stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data.io import is_object_store, read_parquet
from genrec.data.schema import EVENTS_FILE, ITEMS_FILE, MANIFEST_FILE, PSEUDO_EXPOSURES_FILE
from genrec.data.timestamps import canonical_ts
from genrec.errors import InputDataError


def _day(d) -> datetime:
    return datetime.combine(d, time(), tzinfo=timezone.utc)


def _load(cfg: PipelineConfig, out_dir: Path) -> tuple[pa.Table, pa.Table, dict]:
    kind = cfg.source.kind
    extra: dict = {}
    if kind == "simulator":
        from genrec.data import simulator

        logs = simulator.simulate(cfg.simulator, cfg.run.seed)
        logs.truth.save(out_dir / simulator.GROUND_TRUTH_FILE)
        simulator.save_truth_summary(out_dir / "ground_truth.json", cfg.simulator)
        items = logs.items
        if cfg.simulator.images:
            items = simulator.write_images(items, out_dir, cfg.simulator, logs.truth, cfg.run.seed)
        extra = {"period": (logs.period_start, logs.period_end), "simulation": simulator.describe(logs)}
        if logs.pseudo_exposures is not None:
            pq.write_table(logs.pseudo_exposures, out_dir / PSEUDO_EXPOSURES_FILE)
            extra["simulation"]["pseudo_exposures"] = logs.pseudo_exposures.num_rows
        return logs.events, items, extra
    if not cfg.source.path:
        raise InputDataError(f"source.kind={kind} needs source.path (the dataset folder)")
    if is_object_store(cfg.source.path):
        if kind != "parquet":
            raise InputDataError(f"source.path={cfg.source.path}: only source.kind=parquet reads from an object store")
        base, hint = cfg.source.path.rstrip("/"), f"source.kind=parquet needs {EVENTS_FILE} and {ITEMS_FILE} there"
        return read_parquet(f"{base}/{EVENTS_FILE}", hint), read_parquet(f"{base}/{ITEMS_FILE}", hint), extra
    path = Path(cfg.source.path)
    if kind == "movielens":
        from genrec.data.movielens import load_movielens

        events, items = load_movielens(path)
    elif kind == "amazon_beauty":
        from genrec.data.amazon_beauty import load_amazon_beauty

        events, items = load_amazon_beauty(path)
    else:
        hint = f"source.kind=parquet needs {EVENTS_FILE} and {ITEMS_FILE} in source.path"
        events, items = read_parquet(path / EVENTS_FILE, hint), read_parquet(path / ITEMS_FILE, hint)
        if (path / "images").is_dir():
            shutil.copytree(path / "images", out_dir / "images", dirs_exist_ok=True)
    return events, items, extra


def _period(cfg: PipelineConfig, events: pa.Table, extra: dict) -> tuple[datetime, datetime]:
    start = _day(cfg.source.period_start) if cfg.source.period_start else None
    end = _day(cfg.source.period_end) if cfg.source.period_end else None
    if "period" in extra:
        start, end = start or extra["period"][0], end or extra["period"][1]
    if (start is None or end is None) and "ts" in events.column_names and pa.types.is_timestamp(events.schema.field("ts").type):
        ts = events.column("ts").cast(pa.timestamp("us", tz="UTC"))
        lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
        if lo is not None:
            start = start or _day(lo.date())
            end = end or _day(hi.date()) + timedelta(days=1)
    if start is None or end is None:
        if "ts" not in events.column_names:
            cause = f"the events have no 'ts' column (they have: {', '.join(events.column_names) or 'none'})"
        elif events.num_rows == 0:
            cause = "the events table is empty"
        else:
            cause = "every event's ts is null"
        raise InputDataError(f"cannot tell the period the logs cover: {cause}. Fix the log, or set "
                             f"source.period_start and source.period_end")
    return start, end


def run_ingest(cfg: PipelineConfig, out_dir: str | Path, pipeline_run_id: str) -> dict:
    """Load the configured source and write canonical events and items to out_dir; returns the manifest."""
    out_dir = stage_outputs.begin(out_dir, "ingest", pipeline_run_id, {})
    with tracking.stage_run(cfg, "ingest", pipeline_run_id) as track:
        track.params({"source": cfg.source.model_dump(mode="json")})
        if cfg.source.kind == "simulator":
            track.params({"simulator": cfg.simulator.model_dump(mode="json")})
        events, items, extra = _load(cfg, out_dir)
        events = canonical_ts(events, cfg.source.ts_unit, EVENTS_FILE)
        start, end = _period(cfg, events, extra)
        pq.write_table(events, out_dir / EVENTS_FILE)
        pq.write_table(items, out_dir / ITEMS_FILE)
        manifest = {
            "source": cfg.source.kind,
            "source_path": cfg.source.path,
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
            "n_events": events.num_rows,
            "n_items": items.num_rows,
            "created_at": datetime.now(timezone.utc).isoformat(),
            **({"simulation": extra["simulation"]} if "simulation" in extra else {}),
        }
        (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        track.metrics({"n_events": events.num_rows, "n_items": items.num_rows})
        if "simulation" in extra:
            track.metrics({f"sim_{k}": v for k, v in extra["simulation"].items()})
        track.json(manifest, "manifest.json")
        track.dataset(out_dir / EVENTS_FILE, "events_raw", "output",
                      {f.name: str(f.type) for f in events.schema})
        if "ts" in events.column_names and pa.types.is_timestamp(events.schema.field("ts").type):
            days = pc.value_counts(pc.strftime(events.column("ts"), "%Y-%m-%d")).to_pylist()
            days.sort(key=lambda r: r["values"] or "")
            fig = plots.bar([r["values"] for r in days], [r["counts"] for r in days], "Events per day", "day", "events")
            track.figure(fig, "plots/events_per_day.png")
            plots.close(fig)
    stage_outputs.complete(out_dir)
    return manifest
