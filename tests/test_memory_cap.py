"""A data stage under a memory cap that holding its table would break: ingest of a 12M-event parquet source, run as
its task runs it (`genrec ingest`), with its whole process tree watched and killed above the cap. The cap is below
the table's own size in memory, so whole-table code (what ingest was) cannot pass; streaming code does."""

import os
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from genrec.data import tables
from genrec.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA
from genrec.memory import PeakMemory

N_EVENTS = 12_000_000
CAP_MIB = 560


def _write_source(root) -> int:
    """A canonical source with events.parquet as a folder of parts (1M-row files, 256k-row row groups); returns the
    events' size in memory as Arrow holds them."""
    rng = np.random.default_rng(0)
    start = int(datetime(2026, 10, 1, tzinfo=timezone.utc).timestamp() * 1e6)
    (root / "events.parquet").mkdir(parents=True)
    in_memory = 0
    for part, lo in enumerate(range(0, N_EVENTS, 1_000_000)):
        n = min(1_000_000, N_EVENTS - lo)
        table = pa.table({
            "event_id": np.arange(lo, lo + n, dtype=np.int64),
            "user_id": rng.integers(0, 100_000, n),
            "item_id": rng.integers(0, 5_000, n),
            "event_type": pa.array(rng.choice(["expose", "click"], n, p=[0.95, 0.05])),
            "ts": pa.array(start + rng.integers(0, 30 * 86_400_000_000, n), pa.timestamp("us", tz="UTC")),
            "request_id": rng.integers(0, 1_000_000, n),
            "position": rng.integers(0, 10, n).astype(np.int32),
        }, schema=EVENTS_SCHEMA)
        in_memory += table.nbytes
        pq.write_table(table, root / "events.parquet" / f"part-{part}.parquet", row_group_size=262_144)
    pq.write_table(pa.table({"item_id": np.arange(5_000), "title": [f"item {i}" for i in range(5_000)]}).cast(
        pa.schema([ITEMS_SCHEMA.field("item_id"), ITEMS_SCHEMA.field("title")])), root / "items.parquet")
    return in_memory


def test_ingest_streams_a_log_larger_than_its_memory_cap(tmp_path, mlflow_server):
    table_bytes = _write_source(tmp_path / "source")
    assert table_bytes > CAP_MIB * 2**20  # holding the events alone would break the cap, before Python's own memory
    cmd = [sys.executable, "-m", "genrec.cli", "ingest", "--out", str(tmp_path / "raw"), "source.kind=parquet",
           f"source.path={tmp_path / 'source'}", f"run.work_dir={tmp_path / 'work'}", "run.experiment=tests"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    with PeakMemory(proc.pid, interval_s=0.02, cap=CAP_MIB * 2**20, on_cap=proc.kill) as watch:
        output, _ = proc.communicate(timeout=600)
    assert not watch.capped, f"ingest went above {CAP_MIB} MiB (peak {watch.peak / 2**20:.0f} MiB)"
    assert proc.returncode == 0, output[-3000:]
    ref = tables.read_ref(tmp_path / "raw", "events.parquet")
    assert ref.n_rows == N_EVENTS and ref.n_files >= 3  # written in parts as it went
    print(f"peak {watch.peak / 2**20:.0f} MiB for {table_bytes / 2**20:.0f} MiB of events")
