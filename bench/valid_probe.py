"""Probe: score trained GenRec models on the validation requests only (no baselines, no test split).

This is how SFT recipes are compared (bench/results/ablations_amazon_beauty.md): each candidate trains with
`genrec train-sft ... --out <folder>`, this script scores its model on the validation split with the same
request builder, trie beam search and metrics as `genrec evaluate`, and only the chosen recipe is then run
through `genrec evaluate` for its test figure. A DeepSpeed checkpoint folder written during training
(<out>/checkpoints/step-N, or <out>.partial/... while it trains) is scored too: its weights are loaded into
the shape of a finished model (--template).

    python bench/valid_probe.py -c configs/amazon_beauty.yaml run.work_dir=work/beauty16 \
        --model work/beauty16/stages/sft-a [--model ...] [--free] [--json out.json]

Prints one line per model: R@K / NDCG@K for eval.ks, the hallucination rate of free decoding with --free,
and the decoding time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from genrec.config import load_config
from genrec.data.io import read_split_pages
from genrec.eval.metrics import hallucination_rate, ranking_metrics
from genrec.model.genrec_model import GenRecModel
from genrec.model.vocab import SidMap
from genrec.stages.evaluate import generate, test_requests


def load_scored_model(path: Path, template: Path | None) -> GenRecModel:
    """A finished model folder, or a DeepSpeed checkpoint's weights put into `template`'s model."""
    if (path / "mp_rank_00_model_states.pt").is_file():
        if template is None:
            raise SystemExit(f"{path}: a DeepSpeed checkpoint; pass --template <a finished model of the same shape>")
        model = GenRecModel.load(template)
        state = torch.load(path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
        return model.eval()
    return GenRecModel.load(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--model", action="append", required=True, help="A train-sft folder, model folder or checkpoint.")
    ap.add_argument("--template", help="A finished model folder whose shape the checkpoints share.")
    ap.add_argument("--free", action="store_true", help="Also decode without the trie (HaR over all beams).")
    ap.add_argument("--json", help="Append one JSON line per model to this file.")
    ap.add_argument("overrides", nargs="*", help="key.sub=value config overrides (as the genrec CLI takes).")
    args = ap.parse_intermixed_args()  # overrides may come before and after the flags
    cfg = load_config(args.config, args.overrides)
    stages = Path(cfg.run.work_dir) / "stages"
    sid_map = SidMap.load(stages / "sids")
    e = cfg.eval
    histories, truths, counts, _ = test_requests(read_split_pages(stages / "pages", "valid"), e.truth_types,
                                                 cfg.model.max_history, e.max_requests, cfg.run.seed)
    print(f"validation requests: {counts}", flush=True)
    torch.set_grad_enabled(False)
    for name in args.model:
        model = load_scored_model(Path(name), Path(args.template) if args.template else None)
        sid_map.require_fingerprint(model.sid_fingerprint, f"the model in {name}")
        t0 = time.perf_counter()
        ranked, _ = generate(model, sid_map, histories, e.beam_width, True, e.batch_size)
        row = {"model": name, **ranking_metrics(ranked, truths, e.ks), "decode_s": round(time.perf_counter() - t0, 1)}
        if args.free:
            free, _ = generate(model, sid_map, histories, e.beam_width, False, e.batch_size)
            row["har"] = hallucination_rate(free)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
