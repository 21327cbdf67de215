"""The tiny pipeline tracking to the team's server against tracking to a sqlite file, in one run.

    python bench/mlflow_server.py [--config configs/tiny.yaml] [--repeats 1] [--out bench/results/mlflow_server.md]

Starts the stack of mlflow/local_stack.py (PostgreSQL, moto's S3, `mlflow server` with basic auth and proxied
artifacts) with throwaway passwords, then runs `genrec run` (subprocess runner) on the same config, alternating:
sqlite in the work folder (the baseline), the server as the pipeline user. Prints and writes each run's wall time,
the per-stage durations MLflow recorded, and the ratio server / sqlite. Needs PostgreSQL's server programs.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "mlflow"))
import local_stack  # noqa: E402

LINE = re.compile(r"^  (\S+)\s+success\s+(\d+) s$", re.M)


def run(config: str, work: Path, env: dict[str, str]) -> tuple[float, dict[str, int]]:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--config", config, f"run.work_dir={work}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"genrec run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, {task: int(s) for task, s in LINE.findall(proc.stdout)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (alternating)")
    parser.add_argument("--auth-cache-ttl", type=int, default=60,
                        help="the server's MLFLOW_AUTH_CACHE_TTL_SECONDS [60, the stack's]; 0: every request checks "
                             "the password")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "mlflow_server.md")
    args = parser.parse_args()
    os.environ["MLFLOW_AUTH_CACHE_TTL_SECONDS"] = str(args.auth_cache_ttl)
    secret_env = local_stack.throwaway_secrets()
    os.environ.update(secret_env)
    tmp = Path(tempfile.mkdtemp(prefix="genrec-bench-mlflow-"))
    tmp.chmod(0o755)  # as root, PostgreSQL's user must reach its folder
    stack = local_stack.up(tmp / "stack", port=local_stack.free_port(), pg_dir=tmp / "pg")
    base_env = {k: v for k, v in os.environ.items() if k not in secret_env and not k.startswith("MLFLOW_")}
    client_env = dict(base_env, MLFLOW_TRACKING_URI=stack.uri, MLFLOW_TRACKING_USERNAME="pipeline",
                      MLFLOW_TRACKING_PASSWORD=secret_env["MLFLOW_TRACKING_PASSWORD"])
    results: dict[str, list[tuple[float, dict[str, int]]]] = {"sqlite": [], "server": []}
    try:
        for i in range(args.repeats):
            for name, env in (("sqlite", base_env), ("server", client_env)):
                seconds, stages = run(args.config, tmp / f"{name}-{i}", env)
                results[name].append((seconds, stages))
                print(f"{name:<7} run {i + 1}: {seconds:6.1f} s", flush=True)
    finally:
        local_stack.down(tmp / "stack", stack)
        shutil.rmtree(tmp, ignore_errors=True)

    def mean(name: str) -> float:
        return sum(s for s, _ in results[name]) / len(results[name])

    tasks = list(results["sqlite"][0][1])
    lines = [f"# Tiny pipeline: team server vs sqlite ({time.strftime('%Y-%m-%d')})", "",
             f"`python bench/mlflow_server.py --config {args.config} --repeats {args.repeats} --auth-cache-ttl "
             f"{args.auth_cache_ttl}` on "
             f"{platform.machine()}, {os.cpu_count()} cores. Subprocess runner; sqlite = the work folder's "
             "mlflow.db with artifacts on disk; server = mlflow/local_stack.py (PostgreSQL, moto's S3 with proxied "
             f"artifacts, basic auth with a login cache of {args.auth_cache_ttl} s, 2 workers) on 127.0.0.1, as the "
             "pipeline user. Runs alternate.", "",
             "| | sqlite | server | server / sqlite |", "|---|---:|---:|---:|",
             f"| whole run, s (mean of {args.repeats}) | {mean('sqlite'):.1f} | {mean('server'):.1f} | "
             f"{mean('server') / mean('sqlite'):.2f} |"]
    for task in tasks:
        a = sum(st[task] for _, st in results["sqlite"]) / args.repeats
        b = sum(st.get(task, 0) for _, st in results["server"]) / args.repeats
        lines.append(f"| {task}, s | {a:.0f} | {b:.0f} | {b / a if a else float('nan'):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
