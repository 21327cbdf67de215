"""Benchmark: SASRec's (or BERT4Rec's) ranking quality against its training epochs, on evaluate's test requests.

The evaluate stage trains the baseline for eval.sasrec.epochs (eval.bert4rec.epochs); this traces the whole
curve in one run, so that GenRec can be set beside a baseline that has stopped improving rather than one
cut short. Same sequences, split, requests and full-catalog ranking as the stage
(`genrec.stages.evaluate._item_sequence_ranking`). On the GPU when there is one.

    python bench/sasrec_epochs.py --config configs/demo.yaml --pages work/bench-sim2/stages/pages \
        --sids work/bench-sim2/stages/sids --epochs 300 --every 20 [--model bert4rec] [--out results.json] \
        [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from genrec.config import load_config
from genrec.data.io import read_split_pages
from genrec.eval.baselines import sasrec_rank, train_sasrec, user_sequences
from genrec.eval.bert4rec import bert4rec_rank, train_bert4rec
from genrec.eval.metrics import ranking_metrics
from genrec.model.vocab import SidMap
from genrec.eval.requests import sample_requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--pages", type=Path, required=True, help="validate-pages' folder (pages/ inside).")
    ap.add_argument("--sids", type=Path, required=True, help="assign-sids' folder (the catalog's item ids).")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--every", type=int, default=20, help="Evaluate every N epochs.")
    ap.add_argument("--model", choices=["sasrec", "bert4rec"], default="sasrec")
    ap.add_argument("--out", type=Path, default=None, help="Write the curve here as JSON.")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, f"eval.{args.model}.epochs={args.epochs}"])
    model_cfg = getattr(cfg.eval, args.model)
    train, rank = (train_sasrec, sasrec_rank) if args.model == "sasrec" else (train_bert4rec, bert4rec_rank)
    sid_map = SidMap.load(args.sids)
    e = cfg.eval
    histories, truths, counts, _ = sample_requests(args.pages, "test", e.truth_types, cfg.model.max_history,
                                                   e.max_requests, cfg.run.seed)
    row_of = {int(i): r + 1 for r, i in enumerate(sid_map.item_ids)}  # as the evaluate stage: 1-based rows
    rows_of_histories = [[row_of[i] for i in h] for h in histories]
    sequences = user_sequences(read_split_pages(args.pages, "train"), row_of)
    curve, start = [], time.perf_counter()

    def evaluate(epoch: int, model) -> None:
        if epoch % args.every and epoch != args.epochs:
            return
        model.eval()
        ranked = sid_map.item_ids[rank(model, rows_of_histories, cfg.model.max_history, e.beam_width) - 1]
        model.train()
        curve.append({"epoch": epoch, "seconds": time.perf_counter() - start} | ranking_metrics(ranked, truths, e.ks))
        print(json.dumps(curve[-1]), flush=True)

    train(sequences, len(sid_map.item_ids), model_cfg, cfg.model.max_history, cfg.run.seed, evaluate)
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.model} {model_cfg.model_dump()}; {len(sequences)} training sequences, {counts['requests']} requests; {where}")
    keys = [k for k in curve[0] if k not in ("epoch", "seconds") and not k.startswith("recall")]
    print("| epochs | seconds | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 2))
    for c in curve:
        print(f"| {c['epoch']} | {c['seconds']:.0f} | " + " | ".join(f"{c[k]:.4f}" for k in keys) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": where, "requests": counts, "curve": curve}, indent=2))


if __name__ == "__main__":
    main()
