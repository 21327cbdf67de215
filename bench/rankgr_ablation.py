"""Benchmark: RankGR's two phases against GenRec's alignment, from the same SFT model with the same budget.

Starts from a work folder whose stages/ hold the data stages and an SFT model (stages/<sft>) (e.g. a `genrec`
CLI run or bench/ablations.py), trains the aligned variants with the same steps, prompts per step and seed,
evaluates each (and the SFT model itself) on the same requests, and writes the table: HR@K and NDCG@K on the
validation requests and on the test requests, HaR, true_r@K on the simulator, and decoding seconds with and
without the rank head (the same model, the same evaluate run).

    python bench/rankgr_ablation.py --config configs/demo.yaml --work work/q16 --sft sft \
        --results bench/results/rankgr_simulator.md [--steps 300] [--ldpo-lrs 3e-5,1e-4,3e-4] \
        [--rsp-model-weights 0,1] [key.sub=value ...]

Variants (all else from the config):
  grpo_sr    align.method=grpo_sr at the config's align.lr (train-reward runs first when stages/reward is missing)
  ldpo       align.method=ldpo, one run per --ldpo-lrs; the validation metric (--select) picks one
  ldpo_rsp   the same + align.rsp.enabled=true at the chosen lr, trained once, decoded under each
             --rsp-model-weights (align.rsp.model_weight, a decoding setting saved with the model); validation
             picks one
An align folder that this script trained with the very same command is reused (a rerun only evaluates).
Choices look at the validation requests only: the table gives test figures for the chosen runs, and validation
figures alone for the runs not chosen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.model.genrec_model import GenRecModel
from genrec.stages.evaluate import paired_differences
from genrec_cli import genrec  # bench/ is on sys.path when a script here runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--sft", default="sft", help="The SFT folder under <work>/stages.")
    ap.add_argument("--results", required=True)
    ap.add_argument("--steps", type=int, default=300, help="Optimizer steps of every variant.")
    ap.add_argument("--ldpo-lrs", default="1e-4", help="Comma-separated peak learning rates tried for LDPO "
                                                       "(GRPO-SR keeps the config's align.lr).")
    ap.add_argument("--rsp-model-weights", default="0", help="Comma-separated align.rsp.model_weight values the "
                                                             "rank head's model is decoded with (0: RankGR's rule).")
    ap.add_argument("--select", default="ndcg@10", help="The validation metric that picks among runs.")
    ap.add_argument("--variants", default="grpo_sr,ldpo,ldpo_rsp", help="Comma-separated subset of the variants.")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    stages = Path(args.work).resolve() / "stages"
    chosen = args.variants.split(",")
    unknown = set(chosen) - {"grpo_sr", "ldpo", "ldpo_rsp"}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from grpo_sr, ldpo, ldpo_rsp")
    common = ["-c", args.config, f"run.work_dir={stages.parent}", f"align.max_steps={args.steps}",
              "eval.baselines=[popularity]", *args.overrides]
    raw = stages / "ingest"
    raw_args = ["--raw", str(raw)] if raw.is_dir() else []
    data_args = ["--pages", str(stages / "pages"), "--sids", str(stages / "sids")]
    if "grpo_sr" in chosen and not (stages / "reward").is_dir():
        print("[train-reward]", flush=True)
        genrec("train-reward", *common, *data_args, *raw_args, "--out", str(stages / "reward"))
    reward_args = ["--reward", str(stages / "reward")] if (stages / "reward").is_dir() else []
    timings: dict[str, float] = {}

    def align(name: str, extra: list[str]) -> tuple[Path, dict]:
        out = stages / f"align-{name}"
        cmd = ["align", *common, *extra, "--sft", str(stages / args.sft), *reward_args, *data_args,
               "--embeddings", str(stages / "embeddings"), "--out", str(out)]
        marker = out / "bench_command.json"  # what trained this folder: reused only for the very same command
        if (out / "report.json").is_file() and marker.is_file() and json.loads(marker.read_text()) == cmd:
            print(f"[align {name}] reusing {out} (delete it to train again)", flush=True)
            return out, json.loads((out / "report.json").read_text())
        print(f"[align {name}]", flush=True)
        timings[name] = genrec(*cmd)
        marker.write_text(json.dumps(cmd))
        return out, json.loads((out / "report.json").read_text())

    def evaluate(name: str, model: Path) -> tuple[dict, dict]:
        print(f"[evaluate {name}]", flush=True)
        ev = stages / f"eval-{name}"
        genrec("evaluate", *common, "--model", str(model), *reward_args, *raw_args, *data_args, "--out", str(ev))
        return (json.loads((ev / "metrics.json").read_text()),
                json.loads((ev / "metrics_valid.json").read_text()) if (ev / "metrics_valid.json").is_file() else {})

    rows, evals = {}, {"sft": stages / "eval-sft"}
    test, valid = evaluate("sft", stages / args.sft)
    rows["sft"] = {"test": test["genrec"], "valid": valid.get("genrec", {}), "report": {}}
    rows["popularity"] = {"test": test["popularity"], "valid": valid.get("popularity", {}), "report": {}}
    if "grpo_sr" in chosen:
        out, report = align("grpo_sr", ["align.method=grpo_sr"])
        test, valid = evaluate("grpo_sr", out)
        rows["grpo_sr"] = {"test": test["genrec"], "valid": valid.get("genrec", {}), "report": report}
        evals["grpo_sr"] = stages / "eval-grpo_sr"
    lrs = [float(x) for x in args.ldpo_lrs.split(",")]
    best_lr = lrs[0]
    if "ldpo" in chosen:
        runs = {}
        for lr in lrs:
            out, report = align(f"ldpo-lr{lr:g}", ["align.method=ldpo", f"align.lr={lr}"])
            test, valid = evaluate(f"ldpo-lr{lr:g}", out)
            runs[lr] = {"test": test["genrec"], "valid": valid.get("genrec", {}), "report": report}
        best_lr = _pick(runs, args.select)
        evals[f"ldpo, lr {best_lr:g}"] = stages / f"eval-ldpo-lr{best_lr:g}"
        for lr, r in runs.items():
            rows[f"ldpo, lr {lr:g}" + (" (chosen)" if lr == best_lr else "")] = r if lr == best_lr else {**r, "test": {}}
    if "ldpo_rsp" in chosen:
        out, report = align("ldpo_rsp", ["align.method=ldpo", f"align.lr={best_lr}", "align.rsp.enabled=true"])
        runs = {}
        for w in [float(x) for x in args.rsp_model_weights.split(",")]:
            decoded = _with_model_weight(out, w)
            test, valid = evaluate(f"ldpo_rsp-w{w:g}", decoded)
            runs[w] = {"test": test["genrec"], "valid": valid.get("genrec", {}), "report": report,
                       "no_rsp": test.get("genrec_no_rsp")}
        best_w = _pick(runs, args.select)
        evals[f"ldpo_rsp, model_weight {best_w:g}"] = stages / f"eval-ldpo_rsp-w{best_w:g}"
        for w, r in runs.items():
            name = f"ldpo_rsp, lr {best_lr:g}, model_weight {w:g}" + (" (chosen)" if w == best_w else "")
            rows[name] = r if w == best_w else {**r, "test": {}}
        rows["ldpo_rsp decoded w/o rank head"] = {"test": runs[best_w]["no_rsp"] or {}, "valid": {}, "report": {}}
    table = _table(rows, args.select) + "\n\n" + _paired_table(evals)
    print(table)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(
        f"<!-- generated by bench/rankgr_ablation.py; steps={args.steps}; ldpo_lrs={args.ldpo_lrs}; "
        f"rsp_model_weights={args.rsp_model_weights}; select={args.select}; overrides={args.overrides}; "
        f"align seconds={ {k: round(v) for k, v in timings.items()} } -->\n" + table + "\n")


def _pick(runs: dict, metric: str):
    """The key of the run with the best validation `metric` (the first on a tie)."""
    missing = [k for k, r in runs.items() if metric not in r["valid"]]
    if missing:
        raise SystemExit(f"no validation {metric} for {missing}: the choice needs a validation split "
                         "(sessionize.split.valid_days > 0 or leave_one_out)")
    return max(runs, key=lambda k: runs[k]["valid"][metric])


def _with_model_weight(align_out: Path, weight: float) -> Path:
    """A copy of an aligned model whose rank head decodes with align.rsp.model_weight = `weight`."""
    model = GenRecModel.load(align_out)
    model.rank.model_weight = weight
    return model.save(align_out.parent / f"{align_out.name}-w{weight:g}")


def _table(rows: dict, select: str) -> str:
    ks = sorted({int(k.split("@")[1]) for r in rows.values() for k in r["test"] if k.startswith("hr@")})
    test_cols = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")] + ["har"] + [f"true_r@{k}" for k in ks] + ["decode_s"]
    valid_cols = list(dict.fromkeys([select, *(f"{m}@{k}" for k in ks[-2:] for m in ("hr", "ndcg"))]))
    head = ["variant", *[f"valid {c}" for c in valid_cols], *[f"test {c}" for c in test_cols], "final loss terms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [_fmt(r["valid"].get(c)) for c in valid_cols] + [_fmt(r["test"].get(c)) for c in test_cols]
        terms = ", ".join(f"{k[6:]} {v:.3f}" for k, v in r["report"].items()
                          if k.startswith("final_") and isinstance(v, float))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {terms or '-'} |")
    return "\n".join(lines)


def _paired_table(evals: dict[str, Path], ks=(10,)) -> str:
    """Each chosen variant minus the SFT model on the same test requests (from evaluate's topk.parquet), as
    evaluate's paired_differences computes them: mean difference and 95% paired bootstrap interval (seed 0)."""
    def test_rows(folder: Path) -> pd.DataFrame:
        t = pd.read_parquet(folder / "topk.parquet")
        return t[(t["method"] == "genrec") & (t["split"] == "test")].sort_values("request")

    frames = {name: test_rows(folder) for name, folder in evals.items()}
    base = frames["sft"]
    for name, other in frames.items():
        if other["page_id"].tolist() != base["page_id"].tolist():
            raise SystemExit(f"{evals[name]}: other test requests than {evals['sft']}")
    truths = [set(x.tolist()) for x in base["true_items"]]
    rankings = {name: np.stack(f["ranked_items"].tolist()) for name, f in frames.items()}
    variants = [name for name in evals if name != "sft"]
    paired = paired_differences(rankings, truths, list(ks), 0, [(name, "sft") for name in variants])
    metrics = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")]
    lines = ["| " + " | ".join(["test, minus the SFT model", *metrics]) + " |", "|" + "---|" * (len(metrics) + 1)]
    for name in variants:
        cells = [f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]" for mean, lo, hi in
                 (paired[f"{name} - sft"][m] for m in metrics)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


if __name__ == "__main__":
    main()
