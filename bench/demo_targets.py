"""Checks a finished demo run against issue 16's demo targets; exits 1 when one fails.

The suite runs the demo pipeline at shrunk budgets, so it cannot see the demo's quality; this reads what a full
`make run` wrote (evaluate's metrics.json, metrics_valid.json and paired.json) and prints, for each split:
GenRec's HR@10 and NDCG@10 beside each baseline's, the paired difference with its 95% interval, and the
free-decoding HaR against its limit. No model runs.

    python bench/demo_targets.py --eval work/kfp/<pipeline-run-id>/<run>/evaluate/evaluation
    python bench/demo_targets.py --eval "$(ls -d work/kfp/*/*/evaluate/evaluation | tail -1)"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = ("hr@10", "ndcg@10")


def check_split(metrics: dict, paired: dict, baselines: list[str], max_har: float) -> list[tuple[str, bool]]:
    """(line, passed) for GenRec against each baseline on each metric, and for HaR, on one split."""
    out = []
    for base in baselines:
        for m in METRICS:
            diff, lo, hi = paired[f"genrec - {base}"][m]
            ok = metrics["genrec"][m] > metrics[base][m]
            out.append((f"genrec {m} {metrics['genrec'][m]:.4f} vs {base} {metrics[base][m]:.4f}: "
                        f"{diff:+.4f} [{lo:+.4f}, {hi:+.4f}]", ok))
    har = metrics["genrec"].get("har")
    out.append((f"genrec free-decoding HaR {har} (limit {max_har})", har is not None and har <= max_har))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", required=True, type=Path, help="evaluate's output folder (holds metrics.json).")
    ap.add_argument("--baselines", default="popularity,sasrec", help="Comma-separated baselines GenRec must beat.")
    ap.add_argument("--max-har", type=float, default=0.05, help="The issue's limit on free-decoding HaR.")
    args = ap.parse_args()
    files = {"test": args.eval / "metrics.json", "valid": args.eval / "metrics_valid.json"}
    paired_file = args.eval / "paired.json"
    for f in [*files.values(), paired_file]:
        if not f.is_file():
            sys.exit(f"{f}: missing; --eval must be evaluate's output folder of a finished run")
    paired = json.loads(paired_file.read_text())
    failed = 0
    for split, f in files.items():
        print(f"## {split}")
        for line, ok in check_split(json.loads(f.read_text()), paired[split], args.baselines.split(","), args.max_har):
            print(f"{'PASS' if ok else 'FAIL'}  {line}")
            failed += not ok
    print(f"\n{failed} target(s) failed" if failed else "\nall demo targets hold")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
