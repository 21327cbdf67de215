"""Benchmark: the Spark sessionization job on 1M, 10M and 30M simulated events on this machine.

Prints, per size, the job's wall time, events per second per core and the ratio to a baseline measured
in the same run on the same data (read the events, sort them by user and time, write them back: the
least any sessionization must do). Then the scaling exponent b of time ~ events^b (1.0 = linear).
Results go to bench/results/sessionize_scaling.{json,md}.

    python bench/sessionize_scaling.py [--sizes 1e6 1e7 3e7] [--master local[*]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from genrec.config import SessionizeConfig, SimulatorConfig
from genrec.data.simulator import simulate
from genrec.spark.sessionize import build_spark, sessionize

EVENTS_PER_USER_MONTH = 578  # measured on the simulator's defaults (30 days, page size 10)
RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _simulate(n_events: int, path: Path) -> int:
    n_users = max(100, int(n_events / EVENTS_PER_USER_MONTH))
    cfg = SimulatorConfig(n_users=n_users, n_items=5_000 if n_events <= 2e6 else 20_000)
    logs = simulate(cfg, seed=0)
    pq.write_table(logs.events, path)
    return logs.events.num_rows


def _baseline(spark, events: str, out: str) -> float:
    t0 = time.time()
    spark.read.parquet(events).sort("user_id", "ts", "event_id").write.mode("overwrite").parquet(out)
    return time.time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 3e7])
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--driver-memory", default="12g")
    parser.add_argument("--tag", default="", help="suffix for the result files (default: none)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="genrec-bench-"))
    # One Spark session (one JVM) for every size, warmed up on a small log first, so that JIT warm-up
    # is not charged to the first size.
    cfg = SessionizeConfig(master=args.master, driver_memory=args.driver_memory, shuffle_partitions=16, output_partitions=4)
    spark = build_spark(cfg, "genrec-bench")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        _simulate(200_000, tmp / "warmup.parquet")
        _baseline(spark, str(tmp / "warmup.parquet"), str(tmp / "baseline"))
        sessionize(spark, str(tmp / "warmup.parquet"), str(tmp / "out"), cfg)
        for size in args.sizes:
            events_path = tmp / f"events_{int(size)}.parquet"
            t0 = time.time()
            n = _simulate(int(size), events_path)
            sim_s = time.time() - t0
            spark.conf.set("spark.sql.shuffle.partitions", str(max(8, int(n / 500_000))))
            cfg = cfg.model_copy(update={"output_partitions": max(2, int(n / 2_000_000))})
            base_s = _baseline(spark, str(events_path), str(tmp / "baseline"))
            t0 = time.time()
            report = sessionize(spark, str(events_path), str(tmp / "out"), cfg)
            job_s = time.time() - t0
            row = {"events": n, "pages": report["n_pages"], "simulate_s": round(sim_s, 1), "baseline_sort_s": round(base_s, 1),
                   "job_s": round(job_s, 1), "events_per_s_per_core": round(n / job_s / cores),
                   "job_over_baseline": round(job_s / base_s, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(tmp / "out", ignore_errors=True)
            shutil.rmtree(tmp / "baseline", ignore_errors=True)
            events_path.unlink()
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    ev = np.log([r["events"] for r in rows])
    exponent = float(np.polyfit(ev, np.log([r["job_s"] for r in rows]), 1)[0]) if len(rows) > 1 else float("nan")
    base_exp = float(np.polyfit(ev, np.log([r["baseline_sort_s"] for r in rows]), 1)[0]) if len(rows) > 1 else float("nan")
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cores": cores, "cpu": _cpu_model(),
              "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
              "master": args.master, "rows": rows, "scaling_exponent": round(exponent, 3),
              "baseline_scaling_exponent": round(base_exp, 3)}
    print(f"scaling exponent (time ~ events^b): b = {exponent:.3f}; baseline sort b = {base_exp:.3f}")
    RESULTS.mkdir(exist_ok=True)
    stem = "sessionize_scaling" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Sessionization scaling ({result['date']})", "",
             f"Machine: {cores} cores ({result['cpu']}), {result['memory_gib']} GiB; Spark {args.master}.", "",
             "| events | pages | job s | events/s/core | baseline sort s | job / baseline |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['events']:,} | {r['pages']:,} | {r['job_s']} | {r['events_per_s_per_core']:,} | {r['baseline_sort_s']} | "
              f"{r['job_over_baseline']} |" for r in rows]
    lines += ["", f"Scaling exponent b (time ~ events^b, least squares over the sizes): **{exponent:.3f}** "
              f"(baseline sort: {base_exp:.3f}; 1.0 is linear)."]
    for a, b in zip(rows, rows[1:]):  # the fit is pulled down by fixed costs at the small end
        step = np.log(b["job_s"] / a["job_s"]) / np.log(b["events"] / a["events"])
        lines.append(f"- from {a['events']:,} to {b['events']:,} events: b = {step:.2f}")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
