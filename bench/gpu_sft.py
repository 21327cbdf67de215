"""Benchmark for a GPU: the train-sft loop in bf16 vs fp32 (throughput, MFU, peak memory) across model sizes,
and GenRec trained with GPU-scale compute on the simulator, scored on the same test requests as the CPU ablations.

    python bench/gpu_sft.py --config configs/demo.yaml --pages work/bench-sim2/stages/pages \
        --sids work/bench-sim2/stages/sids --out work/gpu [--sizes demo,small,qwen2.5-0.5b] [--steps 30] \
        [--quality] [key.sub=value ...]

It calls train-sft's own pieces (prepare_training, the DeepSpeed loop) and evaluate's (test requests,
trie-constrained and free beam search, metrics), without MLflow, so that it runs where only torch,
DeepSpeed and pydantic are installed. The overrides apply to every run.

1. Ceilings: an 8192^3 matrix product in bf16 and in fp32 (median of 10 after 3 warm-ups, random data),
   measured in the same run: the denominators of MFU.
2. Throughput (--sizes): per size and precision, --steps optimizer steps of the loop on the stage's samples
   and length-grouped batches. Tokens/s: the loop's own figure (non-padding positions), over the log
   windows after the first. Model FLOPs per token: 6 (N + d V) + 6 n_layers d T, PaLM's estimate with
   N the non-embedding parameters, d V the tied output projection, T the mean sample length (causal
   attention). MFU: achieved FLOP/s over the ceiling of the same precision. fp32 runs without TF32.
3. Quality (--quality): one train-sft run with the overrides (sft.epochs, sft.micro_batch_size, model.size,
   ...), then evaluate's metrics on all test requests with a history and a true item, beside most-popular
   (a check that the requests are those of the CPU tables). The model is written to <out>/quality-model.

Writes <out>/gpu_sft.json (every figure) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genrec.config import load_config
from genrec.data.io import read_split_pages
from genrec.eval.baselines import popularity_ranking
from genrec.eval.metrics import hallucination_rate, ranking_metrics
from genrec.model.vocab import SidMap
from genrec.eval.requests import sample_requests
from genrec.stages.evaluate import generate
from genrec.stages.train_sft import loop_config, prepare_training, train_model
from genrec.train.deepspeed_loop import init_distributed


def matmul_tflops(dtype: torch.dtype, n: int = 8192) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def flops_per_token(model, mean_len: float) -> float:
    lm = model.lm.config
    embed = model.lm.get_input_embeddings().weight.numel()
    non_embedding = sum(p.numel() for p in model.parameters()) - embed  # untied: holds the output projection
    head = embed if lm.tie_word_embeddings else 0  # tied: the input table is also the output projection
    return 6 * (non_embedding + head) + 6 * lm.num_hidden_layers * lm.hidden_size * mean_len


def train(cfg, pages: Path, sids: Path, ckpt_dir: Path):
    """One run of train-sft's loop (no MLflow); returns (training set, loop result, seconds)."""
    data = prepare_training(cfg, pages, sids)
    loop = loop_config(cfg)
    loop.checkpoint_every = 10 ** 9  # timing and quality runs keep no checkpoint
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    result = train_model(cfg, data, loop, ckpt_dir, lambda step, row: None)
    return data, result, time.perf_counter() - t


def throughput(args, ceilings: dict) -> list[dict]:
    rows = []
    for size in args.sizes.split(","):
        for precision in ("fp32", "bf16"):
            cfg = load_config(args.config, [*args.overrides, f"model.size={size}", f"sft.precision={precision}",
                                            f"sft.max_steps={args.steps}", "sft.log_every=10"])
            with tempfile.TemporaryDirectory() as ckpt:
                data, result, seconds = train(cfg, args.pages, args.sids, Path(ckpt))
            tps = float(np.mean([h["tokens_per_s"] for h in result.history[1:]] or [result.tokens_per_s]))
            fpt = flops_per_token(data.model, float(np.mean(data.lengths)))
            row = {"size": size, "precision": precision, "parameters": data.report["n_parameters"],
                   "micro_batch": cfg.sft.micro_batch_size, "steps": result.steps, "seconds": seconds,
                   "tokens_per_s": tps, "final_loss": result.final_loss, "flops_per_token": fpt,
                   "tflops": tps * fpt / 1e12,
                   "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None}
            if ceilings:
                row["mfu"] = row["tflops"] / ceilings[precision]
            rows.append(row)
            print(json.dumps(row), flush=True)
            del data
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def quality(args) -> dict:
    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as ckpt:
        data, result, seconds = train(cfg, args.pages, args.sids, Path(ckpt))
    model_dir = data.model.save(args.out / "quality-model")
    sid_map = SidMap.load(args.sids)
    from genrec.model.genrec_model import GenRecModel  # reloaded: evaluation as the evaluate stage sees the model

    model = GenRecModel.load(model_dir).to("cuda" if torch.cuda.is_available() else "cpu")
    e = cfg.eval
    histories, truths, counts, _ = sample_requests(args.pages, "test", e.truth_types, cfg.model.max_history,
                                                   e.max_requests, cfg.run.seed)
    t = time.perf_counter()
    ranked, _ = generate(model, sid_map, histories, e.beam_width, True, e.batch_size)
    free, _ = generate(model, sid_map, histories, e.beam_width, False, e.batch_size)
    eval_seconds = time.perf_counter() - t
    popularity = np.tile(popularity_ranking(read_split_pages(args.pages, "train"), e.beam_width), (len(histories), 1))
    return {"overrides": args.overrides, "model_size": cfg.model.size, "token_merger": cfg.model.token_merger,
            "parameters": data.report["n_parameters"], "samples": data.report["n_samples"], "steps": result.steps,
            "epochs": result.history[-1]["epoch"] if result.history else None, "train_seconds": seconds,
            "final_loss": result.final_loss, "tokens_per_s": result.tokens_per_s, "eval_seconds": eval_seconds,
            "requests": counts, "genrec": ranking_metrics(ranked, truths, e.ks) | {"har": hallucination_rate(free)},
            "popularity": ranking_metrics(popularity, truths, e.ks),
            "loss_curve": [(h["step"], h["loss"]) for h in result.history]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--pages", type=Path, required=True, help="validate-pages' folder (pages/ inside).")
    ap.add_argument("--sids", type=Path, required=True, help="assign-sids' folder.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", default="", help="Comma-separated model sizes for the throughput table (none: skip).")
    ap.add_argument("--steps", type=int, default=30, help="Optimizer steps per throughput run.")
    ap.add_argument("--quality", action="store_true", help="Train once with the overrides and evaluate.")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, in the runs and in the ceiling
    init_distributed()
    report: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__}
    if torch.cuda.is_available():
        report["ceiling_tflops"] = {"bf16": matmul_tflops(torch.bfloat16), "fp32": matmul_tflops(torch.float32)}
        print(json.dumps(report), flush=True)
    if args.sizes:
        report["throughput"] = throughput(args, report.get("ceiling_tflops", {}))
    if args.quality:
        report["quality"] = quality(args)
    name = "gpu_sft_quality.json" if args.quality and not args.sizes else "gpu_sft.json"
    (args.out / name).write_text(json.dumps(report, indent=2))
    if "throughput" in report:
        print("| size | parameters | precision | micro-batch | tokens/s | TFLOP/s | MFU | peak GiB | final loss |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in report["throughput"]:
            print(f"| {r['size']} | {r['parameters'] / 1e6:.1f}M | {r['precision']} | {r['micro_batch']} | "
                  f"{r['tokens_per_s']:,.0f} | {r['tflops']:.2f} | {r.get('mfu', float('nan')):.1%} | "
                  f"{r['peak_memory_gib'] or 0:.2f} | {r['final_loss']:.3f} |")
    if "quality" in report:
        q = report["quality"]
        print(f"quality: {q['model_size']}, {q['steps']} steps ({q['epochs']:.1f} epochs) in {q['train_seconds']:.0f} s, "
              f"final loss {q['final_loss']:.3f}; {q['requests']['requests']} requests")
        for method in ("genrec", "popularity"):
            print(f"  {method}: " + ", ".join(f"{k} {v:.4f}" for k, v in q[method].items() if not k.startswith("recall")))


if __name__ == "__main__":
    main()
