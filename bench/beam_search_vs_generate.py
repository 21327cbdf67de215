"""Benchmark: genrec's trie-masked beam search vs transformers' generate(prefix_allowed_tokens_fn=...).

The second is the approach of the MiniOneRec project: HF beam search, asking a Python callback for the
allowed next tokens of every beam at every step. Both run on the same model, prompts (Token Merger
embeddings as inputs_embeds) and SID trie, at beam widths 10 and 50. Printed per width: requests/s of
each, the throughput ratio (ours / HF), and how often the two agree (same top-B set, same order).

    python bench/beam_search_vs_generate.py [--model-dir work/stages/sft --sids-dir work/stages/sids]
        [--requests 256] [--batch 32] [--device cuda]

Without --model-dir, a demo-size model is built (seeded random init) over a synthetic catalog of
--items items with 3-level SIDs; its logits are far from uniform enough for unambiguous rankings.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from genrec.model.beam_search import PrefixMasks, beam_search, left_pad_prompts
from genrec.model.genrec_model import GenRecModel, build_model
from genrec.model.vocab import SidMap


def hf_generate(model: GenRecModel, sid_map: SidMap, histories: list[np.ndarray], beam: int) -> np.ndarray:
    """(N, beam) item ids from transformers' beam search with a trie callback."""
    vocab, levels = model.vocab, model.vocab.levels
    starts = [vocab.level_start(i) for i in range(levels)]
    masks = PrefixMasks(sid_map.trie())

    def allowed(batch_id: int, generated: torch.Tensor) -> list[int]:
        level = len(generated)
        if level >= levels:
            return [vocab.eos]
        prefix = (generated.cpu() - torch.tensor(starts[:level])).reshape(1, level)
        return (torch.nonzero(masks.allowed(level, prefix)[0]).flatten() + starts[level]).tolist()

    ids, is_item, attn, _ = left_pad_prompts(histories, model, next(model.parameters()).device)
    with torch.no_grad():
        out = model.lm.generate(inputs_embeds=model.embed(ids, is_item), attention_mask=attn, num_beams=beam,
                                num_return_sequences=beam, max_new_tokens=levels, do_sample=False,
                                prefix_allowed_tokens_fn=allowed, pad_token_id=vocab.pad, eos_token_id=None,
                                length_penalty=0.0, early_stopping=True)
    codes = (out[:, -levels:].cpu() - torch.tensor(starts)).numpy()
    return sid_map.items_of(codes).reshape(len(histories), beam)


def synthetic(items: int, seed: int) -> tuple[GenRecModel, SidMap]:
    rng = np.random.default_rng(seed)
    k = 32
    codes = np.unique(rng.integers(0, k, (items * 2, 3)), axis=0)[:items]
    sid_map = SidMap(np.arange(len(codes)), codes, (k, k, k))
    torch.manual_seed(seed)
    model = build_model("demo", "", sid_map.sizes, True, sid_map.fingerprint())
    with torch.no_grad():  # a trained model's logits are peaked; a fresh one's nearly flat (ties everywhere)
        model.lm.get_input_embeddings().weight.mul_(8.0)
    return model.eval(), sid_map


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="")
    ap.add_argument("--sids-dir", default="")
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.model_dir:
        model, sid_map = GenRecModel.load(args.model_dir).eval(), SidMap.load(args.sids_dir)
    else:
        model, sid_map = synthetic(args.items, args.seed)
    model = model.to(args.device)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    rng = np.random.default_rng(args.seed)
    histories = [sid_map.codes[rng.integers(0, len(sid_map.item_ids), rng.integers(3, args.history + 1))]
                 for _ in range(args.requests)]
    masks = PrefixMasks(sid_map.trie())
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, token merger "
          f"{model.token_merger}; catalog {len(sid_map.item_ids)} items, codebooks {sid_map.sizes}; "
          f"{args.requests} requests in batches of {args.batch}; {where}")
    print("| beam | genrec req/s | HF generate req/s | ratio | same top-B set | same order |")
    print("|---|---|---|---|---|---|")
    for beam in (10, 50):
        batches = [histories[i:i + args.batch] for i in range(0, len(histories), args.batch)]
        beam_search(model, batches[0][:2], sid_map, beam, True, masks)  # warm-up
        t = time.perf_counter()
        ours = np.concatenate([beam_search(model, b, sid_map, beam, True, masks).items for b in batches])
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        theirs = np.concatenate([hf_generate(model, sid_map, b, beam) for b in batches])
        t_hf = time.perf_counter() - t
        same_set = np.mean([set(a) == set(b) for a, b in zip(ours, theirs)])
        same_order = np.mean([np.array_equal(a, b) for a, b in zip(ours, theirs)])
        print(f"| {beam} | {args.requests / t_ours:.1f} | {args.requests / t_hf:.1f} | {t_hf / t_ours:.2f}x | "
              f"{same_set:.1%} | {same_order:.1%} |", flush=True)


if __name__ == "__main__":
    main()
