"""Benchmark: train-sft reading its pages in memory (sft.data=memory) or as a stream (sft.data=stream), same
world, same optimizer steps, same batch size; both models scored on the same validation requests.

Memory orders every epoch over the whole set (length-grouped); the stream shuffles within a bounded buffer per
data-loader worker. Before the stream can be the default, its model has to be as good: this prints both on the
validation day (the figures a default is chosen on), with the training reports (samples, final loss, tokens/s).

    python bench/sft_data_paths.py --config configs/demo.yaml --work work/bench-sft-data \
        --results bench/results/sft_data_paths.md [--steps 1200] [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genrec_cli import data_stages, genrec, metrics_table  # bench/ is on sys.path when a script here runs

VARIANTS = {"memory": ["sft.data=memory"], "stream": ["sft.data=stream"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--steps", type=int, default=1200, help="Optimizer steps of both runs.")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    # every sample is available to both (the stream cannot draw a subset); both see steps x batch samples
    common = ["-c", args.config, f"run.work_dir={work}", f"sft.max_steps={args.steps}", "sft.max_samples=0",
              "eval.baselines=[]", *args.overrides]
    stages = work / "stages"
    timings = data_stages(stages, *common)
    rows, reports = {}, {}
    for name, extra in VARIANTS.items():
        out = stages / f"sft-{name}"
        print(f"[train-sft {name}]", flush=True)
        timings[f"train-sft {name}"] = genrec("train-sft", "--out", str(out), *common, *extra)
        reports[name] = json.loads((out / "report.json").read_text())
        print(f"[evaluate {name}]", flush=True)
        ev = stages / f"eval-{name}"
        timings[f"evaluate {name}"] = genrec("evaluate", "--model", str(out), "--out", str(ev), *common, *extra)
        rows[name] = json.loads((ev / "metrics_valid.json").read_text())["genrec"]
    keys = [k for k in rows["memory"] if not k.startswith("recall")]
    lines = [f"config `{args.config}` {' '.join(args.overrides)}; {args.steps} optimizer steps each; every training "
             "sample available to both; validation requests.", "",
             *metrics_table("sft.data", rows, keys)]
    lines += ["", "| sft.data | samples | samples per epoch | final loss | tokens/s |", "|---|---|---|---|---|"]
    for name, r in reports.items():
        lines.append(f"| {name} | {r['n_samples']} | {r.get('samples_per_epoch', r['n_samples'])} | "
                     f"{r['final_loss']:.3f} | {r['tokens_per_s']:.0f} |")
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    text = "\n".join(lines) + "\n"
    Path(args.results).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
