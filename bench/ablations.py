"""Benchmark: GenRec vs w/o Token Merger vs point-wise NTP vs SASRec vs most-popular, on one dataset config.

Runs the data stages once (genrec CLI: ingest ... assign-sids into <work>/stages/), then trains three
GenRec variants with the same number of optimizer steps and batch size, and evaluates each on the same
test requests; the baselines (--baselines: most-popular, SASRec, optionally BERT4Rec) are trained and
scored by the first evaluation. Writes the table to --results (Markdown) and prints it.

    python bench/ablations.py --config configs/demo.yaml --work work/bench-ablations \
        --results bench/results/ablations_simulator.md [--steps 600] [key.sub=value ...]

Variants (all else from the config):
  genrec        sft.mode=page, Token Merger on (the paper's method)
  genrec_wo_tm  sft.mode=page, model.token_merger=false
  pointwise     sft.mode=point on the page's positive items (ordered, carted, clicked), the TIGER / LC-Rec
                protocol: one target item per sample
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genrec_cli import data_stages, genrec, metrics_table  # bench/ is on sys.path when a script here runs

VARIANTS = {
    "genrec": [],
    "genrec_wo_tm": ["model.token_merger=false"],
    "pointwise": ["sft.mode=point", "sft.target_types=[order,cart,click]"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--steps", type=int, default=600, help="Optimizer steps of every GenRec variant.")
    ap.add_argument("--baselines", default="popularity,sasrec",
                    help="Baselines scored once, with the first variant (eval.baselines; bert4rec is optional).")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    common = ["-c", args.config, f"run.work_dir={work}", f"sft.max_steps={args.steps}", "sft.max_samples=0",
              *args.overrides]
    stages = work / "stages"
    timings = data_stages(stages, *common)
    rows, train_reports = {}, {}
    for name, extra in VARIANTS.items():
        print(f"[train-sft {name}]", flush=True)
        out = stages / f"sft-{name}"
        timings[f"train-sft {name}"] = genrec("train-sft", "--out", str(out), *common, *extra)
        train_reports[name] = json.loads((out / "report.json").read_text())
        print(f"[evaluate {name}]", flush=True)
        ev = stages / f"eval-{name}"
        baselines = "eval.baselines=[]" if rows else f"eval.baselines=[{args.baselines}]"  # the baselines once
        timings[f"evaluate {name}"] = genrec("evaluate", "--model", str(out), "--out", str(ev), *common, *extra, baselines)
        metrics = json.loads((ev / "metrics.json").read_text())
        rows[name] = metrics["genrec"]
        rows.update({k: v for k, v in metrics.items() if k in args.baselines.split(",")})
    keys = [k for k in rows["genrec"] if not k.startswith("recall")]
    lines = [f"config `{args.config}` {' '.join(args.overrides)}; {args.steps} optimizer steps per GenRec variant; "
             "HaR from free (unconstrained) decoding, the other figures from trie-constrained beam search.", "",
             *metrics_table("method", rows, keys)]
    lines += ["", "| variant | samples | prompt positions (mean) | final loss | tokens/s |", "|---|---|---|---|---|"]
    for name, r in train_reports.items():
        prompt = r["prompt_len_merged"] if r["token_merger"] else r["prompt_len_unmerged"]
        lines.append(f"| {name} | {r['n_samples']} | {prompt:.1f} | {r['final_loss']:.3f} | {r['tokens_per_s']:.0f} |")
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    text = "\n".join(lines) + "\n"
    Path(args.results).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
