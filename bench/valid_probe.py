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
and the decoding time. With --item-weights (models with per-item rows, trained with sft.item_softmax_weight),
also the trie beams re-ranked by beam log p + w * the item softmax's log-probability for each weight w, and the
item softmax's own top K ("alone"): a measurement of what the item rows know, not a decoding mode of genrec.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from genrec.config import load_config
from genrec.eval.metrics import hallucination_rate, ranking_metrics
from genrec.model.beam_search import left_pad_prompts
from genrec.model.genrec_model import GenRecModel, catalog_buckets, item_bucket
from genrec.model.item_softmax import item_softmax_logprobs, rerank_with_item_softmax
from genrec.model.vocab import SidMap
from genrec.eval.requests import sample_requests
from genrec.stages.evaluate import generate


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


def item_softmax_scores(model: GenRecModel, sid_map: SidMap, histories: list[list[int]], beam_items: np.ndarray,
                        top: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The item softmax's log-probability of each beam item (N, beam; -inf for -1) and its own top `top` items."""
    rows = model.item_table.num_embeddings
    cands = catalog_buckets(sid_map.codes, model.vocab, rows)
    catalog = item_bucket(torch.from_numpy(model.vocab.code_tokens(sid_map.codes)), rows)  # each item's row
    index = {int(i): r for r, i in enumerate(sid_map.item_ids)}
    beam_index = np.vectorize(lambda i: index.get(int(i), 0))(beam_items)
    beam_lp, alone = [], []
    for lo in range(0, len(histories), batch_size):
        codes = [sid_map.item_codes(h, "a validation history") for h in histories[lo:lo + batch_size]]
        ids, is_item, attn, pos = left_pad_prompts(codes, model, "cpu")
        state = model(ids, is_item, attn, position_ids=pos, logits_to_keep=1).hidden[:, -1]
        per_item = item_softmax_logprobs(state, catalog.expand(len(codes), -1), model.item_table(cands),
                                         cands).numpy()  # (n, n_items)
        beam_lp.append(np.take_along_axis(per_item, beam_index[lo:lo + len(codes)], axis=1))
        alone.append(sid_map.item_ids[np.argsort(-per_item, axis=1, kind="stable")[:, :top]])
    return np.where(beam_items >= 0, np.concatenate(beam_lp), -np.inf), np.concatenate(alone)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--model", action="append", required=True, help="A train-sft folder, model folder or checkpoint.")
    ap.add_argument("--template", help="A finished model folder whose shape the checkpoints share.")
    ap.add_argument("--free", action="store_true", help="Also decode without the trie (HaR over all beams).")
    ap.add_argument("--json", help="Append one JSON line per model to this file.")
    ap.add_argument("--item-weights", help="Comma-separated weights w: re-rank the trie beams by log p + w * the item "
                                           "softmax's log-probability (needs per-item rows).")
    ap.add_argument("overrides", nargs="*", help="key.sub=value config overrides (as the genrec CLI takes).")
    args = ap.parse_intermixed_args()  # overrides may come before and after the flags
    cfg = load_config(args.config, args.overrides)
    stages = Path(cfg.run.work_dir) / "stages"
    sid_map = SidMap.load(stages / "sids")
    e = cfg.eval
    histories, truths, counts, _ = sample_requests(stages / "pages", "valid", e.truth_types, cfg.model.max_history,
                                                   e.max_requests, cfg.run.seed)
    print(f"validation requests: {counts}", flush=True)
    torch.set_grad_enabled(False)
    for name in args.model:
        model = load_scored_model(Path(name), Path(args.template) if args.template else None)
        sid_map.require_fingerprint(model.sid_fingerprint, f"the model in {name}")
        t0 = time.perf_counter()
        ranked, beam_scores = generate(model, sid_map, histories, e.beam_width, True, e.batch_size)
        row = {"model": name, **ranking_metrics(ranked, truths, e.ks), "decode_s": round(time.perf_counter() - t0, 1)}
        if args.item_weights:
            if model.item_table is None:
                raise SystemExit(f"{name}: --item-weights needs a model with per-item rows "
                                 "(model.item_embedding_buckets)")
            item_lp, alone = item_softmax_scores(model, sid_map, histories, ranked, max(e.ks), e.batch_size)
            row |= {f"alone_{k}": v for k, v in ranking_metrics(alone, truths, e.ks).items()}
            for w in (float(x) for x in args.item_weights.split(",")):
                _, order = rerank_with_item_softmax(torch.from_numpy(beam_scores), torch.from_numpy(item_lp), w)
                reranked = np.take_along_axis(ranked, order.numpy(), axis=1)
                row |= {f"w{w:g}_{k}": v for k, v in ranking_metrics(reranked, truths, e.ks).items()}
        if args.free:
            free, _ = generate(model, sid_map, histories, e.beam_width, False, e.batch_size)
            row["har"] = hallucination_rate(free)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
