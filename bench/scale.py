"""Benchmark: simulated months of 1M, 10M and 100M events through the data stages, each stage as the process a task
runs (`genrec <stage>`), with its wall time and the peak memory of its whole process tree (Python and Spark's JVM),
against one Spark sort of the same events by (user, ts) measured in the same run.

Per size:
  1. `genrec ingest` with the simulator (the month drawn chunk by chunk; item 5 of issue 43);
  2. `genrec ingest` of that month as a canonical parquet source (what a team's own logs go through), then
     validate-events, sessionize, validate-pages on it, with the default settings (spark.master local[*],
     spark.driver_memory 1g);
  3. the baseline: read the ingested events, sort them by (user_id, ts), write them (spark-submit, same driver memory).
Then the scaling exponent b of time ~ events^b between the two largest sizes, per stage and for the four together,
and the four data stages' time over the baseline's. Results: bench/results/scale.{json,md}.

    python bench/scale.py [--sizes 1e6 1e7 1e8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
EVENTS_PER_USER = 578  # the simulator's default month: events per user (bench/sessionize_scaling.py)
STAGES = ["ingest", "validate-events", "sessionize", "validate-pages"]
SORT_JOB = """
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("genrec-bench-sort").config("spark.ui.enabled", "false") \\
    .config("spark.sql.session.timeZone", "UTC").getOrCreate()
spark.read.parquet(sys.argv[1]).sort("user_id", "ts", "event_id").write.mode("overwrite").parquet(sys.argv[2])
spark.stop()
"""


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def measured(cmd: list[str], log: Path) -> dict:
    """Run cmd, sampling its process tree's memory; wall seconds and peak MiB. Fails loudly with the log's end."""
    from genrec.memory import PeakMemory

    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", HF_HUB_OFFLINE="1", PYSPARK_PYTHON=sys.executable)
    t0 = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        with PeakMemory(proc.pid, interval_s=0.1) as peak:
            rc = proc.wait()
    seconds = time.time() - t0
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... exited with {rc}; the end of {log}:\n{log.read_text()[-3000:]}")
    return {"s": round(seconds, 1), "peak_mib": round(peak.peak / 2**20)}


def one_size(n_events: float, root: Path, cores: int) -> dict:
    work = root / f"m{int(n_events)}"
    users = max(100, int(n_events / EVENTS_PER_USER))
    sim = [f"simulator.n_users={users}", f"simulator.n_items={5_000 if n_events <= 2e6 else 20_000}"]
    cli = [sys.executable, "-m", "genrec.cli"]
    common = [f"run.work_dir={work}", "run.experiment=bench-scale"]
    row: dict = {"target_events": int(n_events), "users": users}
    print(f"-- {int(n_events):,} events ({users:,} users)", flush=True)
    row["simulate"] = measured(cli + ["ingest", "--out", str(work / "simulated"), "--pipeline-run-id", "sim",
                                      *common, *sim], work.with_suffix(".simulate.log"))
    month = json.loads((work / "simulated" / "manifest.json").read_text())
    row["events"] = month["n_events"]
    print(f"   simulate (genrec ingest, simulator): {row['simulate']}", flush=True)
    source = ["source.kind=parquet", f"source.path={month['data_dir']}"]
    inputs = {"ingest": [], "validate-events": ["--input", str(work / "raw")],
              "sessionize": ["--input", str(work / "validated")], "validate-pages": ["--input", str(work / "sessionized")]}
    outs = {"ingest": "raw", "validate-events": "validated", "sessionize": "sessionized", "validate-pages": "pages"}
    for stage in STAGES:
        cmd = cli + [stage, *inputs[stage], "--out", str(work / outs[stage]), "--pipeline-run-id", "bench", *common,
                     *source]
        row[stage] = measured(cmd, work.with_suffix(f".{stage}.log"))
        row[stage]["events_per_s_per_core"] = round(row["events"] / row[stage]["s"] / cores)
        print(f"   {stage}: {row[stage]}", flush=True)
    events = json.loads((work / "raw" / "events.parquet.ref.json").read_text())["uri"]
    sort_py = work / "sort_job.py"
    sort_py.write_text(SORT_JOB)
    spark_submit = Path(sys.executable).parent / "spark-submit"
    row["baseline_sort"] = measured([str(spark_submit), "--master", "local[*]", "--driver-memory", "1g", str(sort_py),
                                     events, str(work / "sorted")], work.with_suffix(".sort.log"))
    print(f"   baseline sort: {row['baseline_sort']}", flush=True)
    row["data_stages_s"] = round(sum(row[s]["s"] for s in STAGES), 1)
    row["data_stages_over_sort"] = round(row["data_stages_s"] / row["baseline_sort"]["s"], 2)
    row["pages"] = json.loads((work / "sessionized" / "report.json").read_text())["n_pages"]
    return row


def exponent(a: dict, b: dict, key) -> float:
    return round(math.log(key(b) / key(a)) / math.log(b["events"] / a["events"]), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    root = args.keep or Path(tempfile.mkdtemp(prefix="genrec-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in args.sizes:
            rows.append(one_size(size, root, cores))
            if not args.keep:  # the tables of a size are not needed once it is measured (100M: tens of GB)
                shutil.rmtree(root / f"m{int(size)}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cores": cores, "cpu": _cpu(),
              "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
              "defaults": "spark.master=local[*], spark.driver_memory=1g, spark.shuffle_partitions=64", "rows": rows}
    if len(rows) > 1:
        a, b = rows[-2], rows[-1]
        result["exponent"] = {s: exponent(a, b, lambda r, s=s: r[s]["s"]) for s in STAGES + ["baseline_sort"]}
        result["exponent"]["data_stages"] = exponent(a, b, lambda r: r["data_stages_s"])
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stem = "scale" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(result))


def markdown(result: dict) -> str:
    lines = [f"# Data stages at scale ({result['date']})", "",
             f"Machine: {result['cores']} cores ({result['cpu']}), {result['memory_gib']} GiB. Settings: "
             f"{result['defaults']}. Command: `python bench/scale.py --sizes "
             + " ".join(f"{r['target_events']:.0e}" for r in result["rows"]) + "`.", "",
             "Wall time in seconds / peak memory of the stage's whole process tree (Python + Spark JVM) in MiB:", "",
             "| events | pages | simulate | ingest | validate-events | sessionize | validate-pages | four stages | "
             "sort | four / sort |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        cells = [f"{r[s]['s']} / {r[s]['peak_mib']:,}" for s in ["simulate", *STAGES, "baseline_sort"]]
        lines.append(f"| {r['events']:,} | {r['pages']:,} | " + " | ".join(cells[:5]) + f" | {r['data_stages_s']} | "
                     + cells[5] + f" | {r['data_stages_over_sort']} |")
    lines += ["", "Events per second per core:", "", "| events | " + " | ".join(STAGES) + " |",
              "|---:|" + "---:|" * len(STAGES)]
    for r in result["rows"]:
        lines.append(f"| {r['events']:,} | " + " | ".join(f"{r[s]['events_per_s_per_core']:,}" for s in STAGES) + " |")
    if "exponent" in result:
        lines += ["", "Scaling exponent b (time ~ events^b) between the two largest sizes: "
                  + ", ".join(f"{k} {v}" for k, v in result["exponent"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
