"""Benchmark: the Token Merger's effect on prompt length and training step time, in the same run.

For history lengths 50, 100 and 200 (page-wise samples, 10 target items), the same model shape is
trained with and without the Token Merger on identical samples; printed per length: prompt positions,
whole-sequence positions, ms per optimizer step (forward + backward + AdamW), and the ratios
(w/o TM / TM). The paper reports prompts ~2-3x shorter (3 codes per item -> 1 position).

    python bench/token_merger_step_time.py [--size demo] [--batch 16] [--steps 10] [--device cuda] [--bf16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from genrec.model.genrec_model import build_model
from genrec.model.samples import Sample, collate, encode_sample
from genrec.model.vocab import SidMap


def step_time(model, batch, steps: int, bf16: bool) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    device = next(model.parameters()).device
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="demo")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="Autocast forward and loss to bf16.")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    k = 64
    codes = np.unique(rng.integers(0, k, (20000, 3)), axis=0)[:10000]
    sid_map = SidMap(np.arange(len(codes)), codes, (k, k, k))
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"backbone {args.size}, batch {args.batch}, {args.steps} timed steps, {'bf16' if args.bf16 else 'fp32'}; {where}")
    print("| history | prompt TM | prompt w/o TM | prompt ratio | sequence TM | sequence w/o TM | step ms TM | "
          "step ms w/o TM | step-time ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for hist in (50, 100, 200):
        samples = [Sample(str(i), i, rng.integers(0, len(codes), hist).tolist(), rng.integers(0, len(codes), 10).tolist())
                   for i in range(args.batch)]
        row = {}
        for tm in (True, False):
            torch.manual_seed(args.seed)
            model = build_model(args.size, "", sid_map.sizes, tm, "").to(args.device)
            enc = [encode_sample(s, sid_map, model.vocab, tm) for s in samples]
            batch = {k: v.to(args.device) for k, v in collate(enc, model.vocab.pad).items()}
            prompt = int((enc[0][2] < 0).sum())
            row[tm] = (prompt, batch["ids"].shape[1], step_time(model, batch, args.steps, args.bf16) * 1000)
        (p1, s1, t1), (p0, s0, t0) = row[True], row[False]
        print(f"| {hist} | {p1} | {p0} | {p0 / p1:.2f}x | {s1} | {s0} | {t1:.0f} | {t0:.0f} | {t0 / t1:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
