"""Two runs of the same pipeline, stage by stage: which outputs are bit-identical, equal in content, or within what.

    .venv/bin/genrec run -c configs/tiny.yaml run.work_dir=work/det1
    .venv/bin/genrec run -c configs/tiny.yaml run.work_dir=work/det2
    .venv/bin/python bench/determinism.py work/det1 work/det2

Files are compared as bytes first; then by content: parquet tables and Spark's part-file folders (file names hold
random ids) as sorted tables, JSON without the keys that hold times, paths and run ids, tensors and arrays by their
largest absolute difference. Reports, Data Docs, plots and checkpoints are left out (they hold paths and times).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

# Keys holding times, paths and run ids: a key is left out when it contains one of these words or ends in "_s"
# (a duration in seconds); a looser rule would also drop counts such as n_samples.
VOLATILE = ("time", "created", "duration", "started", "finished", "pipeline_run", "run_id", "path", "docs", "uri",
            "version")
SKIP_PARTS = ("gx", "checkpoints", "quarantine")
SKIP_SUFFIXES = (".png", ".html", ".md", ".log", ".crc")


def run_root(work: Path) -> Path:
    (root,) = [p for p in (work / "kfp").glob("*/*") if p.is_dir()]
    return root


def _strip(o):
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items() if not (k.endswith("_s") or any(t in k for t in VOLATILE))}
    if isinstance(o, list):
        return [_strip(v) for v in o]
    return o


def _sorted(table: pa.Table) -> pa.Table:
    table = table.select(sorted(table.column_names))
    keys = [(c, "ascending") for c in table.column_names
            if pa.types.is_integer(table.schema.field(c).type) or pa.types.is_string(table.schema.field(c).type)]
    return table.sort_by(keys) if keys else table


def _max_diff(a: dict, b: dict) -> float:
    return max((float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) for k in a
                if np.asarray(a[k]).dtype.kind in "fiu"), default=0.0)


def compare(fa: Path, fb: Path) -> str:
    if fa.is_dir():  # a Spark dataset: part files with random names
        ta, tb = (_sorted(ds.dataset(f, format="parquet", partitioning="hive").to_table()) for f in (fa, fb))
        return "same content" if ta.equals(tb) else "differs"
    if not fb.exists():
        return "missing in the second run"
    if fa.read_bytes() == fb.read_bytes():
        return "bit-identical"
    if fa.suffix == ".parquet":
        return "same content" if _sorted(pq.read_table(fa)).equals(_sorted(pq.read_table(fb))) else "differs"
    if fa.suffix == ".json" or fa.name == "executor_output.json":
        same = _strip(json.loads(fa.read_text())) == _strip(json.loads(fb.read_text()))
        return "same content (times, paths, ids aside)" if same else "differs"
    if fa.suffix in (".safetensors", ".npz", ".npy"):
        if fa.suffix == ".safetensors":
            from safetensors.numpy import load_file

            a, b = load_file(str(fa)), load_file(str(fb))
        elif fa.suffix == ".npz":
            a, b = dict(np.load(fa)), dict(np.load(fb))
        else:
            a, b = {"x": np.load(fa)}, {"x": np.load(fb)}
        return f"max |diff| {_max_diff(a, b):.2g}"
    return "differs"


def main(a: Path, b: Path) -> None:
    ra, rb = run_root(a), run_root(b)
    seen_datasets: set[Path] = set()
    for fa in sorted(ra.rglob("*")):
        rel = fa.relative_to(ra)
        if not fa.is_file() or set(rel.parts) & set(SKIP_PARTS) or fa.suffix in SKIP_SUFFIXES or fa.name == "_SUCCESS":
            continue
        if fa.name.startswith("part-") or any(p.startswith("split=") for p in rel.parts):
            cut = next((i for i, p in enumerate(rel.parts) if p.startswith("split=")), len(rel.parts) - 1)
            dataset = ra / Path(*rel.parts[:cut])
            if dataset in seen_datasets:
                continue
            seen_datasets.add(dataset)
            fa, rel = dataset, dataset.relative_to(ra)
        print(f"| {rel} | {compare(fa, rb / rel)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
