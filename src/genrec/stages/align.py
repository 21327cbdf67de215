"""Stage align: the SFT model -> a model aligned to the logged preferences, by one of two routes.

- `align.method: grpo_sr` (GenRec, paper eq. 6-8; genrec.align.grpo_training): rollouts from the policy scored
  by train-reward's model behind a relevance gate (embed-items' vectors), group-relative advantages, plus the
  NLL of the page's engaged items.
- `align.method: ldpo` (RankGR's initial assessment phase; genrec.align.ldpo_training): listwise preference
  optimisation over each page's items by level, jointly with next-token prediction; the reward model and the
  item vectors are not read.

Reads train-sft's folder (model/), validate-pages' folder (the training pages are the prompts: at most
align.max_prompts of them, a seeded sample drawn as the split streams past) and assign-sids' folder; for
GRPO-SR train-reward's (reward_model/) and embed-items' folders; for LDPO ingest's folder when it holds
pseudo_exposures.parquet. Writes into `out_dir`: model/ (the aligned model, same format as train-sft's),
checkpoints/ (resumable; a rerun resumes), quarantine/ (refused rows of a side table), ds_config.json and
report.json. Both routes run through the same DeepSpeed loop as SFT (ZeRO, bf16 on GPU, checkpoints).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from genrec import stage_outputs, tracking
from genrec.align.grpo_training import ENGAGED, grpo_sr_training
from genrec.align.ldpo import PREFERENCE_LEVELS
from genrec.align.ldpo_training import ldpo_training
from genrec.align.training import prompt_pages
from genrec.config import PipelineConfig
from genrec.data.io import iter_split_pages
from genrec.errors import InputDataError
from genrec.model.genrec_model import GenRecModel
from genrec.model.vocab import SidMap
from genrec.train.deepspeed_loop import (LoopConfig, ds_config, gathered_state, init_distributed, run_loop,
                                         split_by_rank)


def loop_config(cfg: PipelineConfig) -> LoopConfig:
    a = cfg.align
    return LoopConfig(micro_batch_size=a.prompts_per_step, grad_accum=a.grad_accum, lr=a.lr, weight_decay=a.weight_decay,
                      warmup_ratio=a.warmup_ratio, grad_clip=a.grad_clip, zero_stage=a.zero_stage, precision=a.precision,
                      epochs=1, max_steps=a.max_steps, checkpoint_every=a.checkpoint_every,
                      keep_checkpoints=a.keep_checkpoints, log_every=a.log_every, seed=cfg.run.seed)


def run_align(cfg: PipelineConfig, sft_dir: str | Path, reward_dir: str | Path, pages_dir: str | Path,
              sids_dir: str | Path, embeddings_dir: str | Path, out_dir: str | Path, pipeline_run_id: str,
              raw_dir: str | Path | None = None) -> dict:
    """Align the SFT model by `align.method` (GRPO-SR or LDPO); returns the report (also report.json)."""
    sft_dir, reward_dir, pages_dir, sids_dir, embeddings_dir, out_dir = map(
        Path, (sft_dir, reward_dir, pages_dir, sids_dir, embeddings_dir, out_dir))
    raw_dir = Path(raw_dir) if raw_dir else None
    a = cfg.align
    rank, world, device = init_distributed()
    grpo = a.method == "grpo_sr"  # LDPO reads neither the reward model nor the item vectors
    out_dir = stage_outputs.begin(out_dir, "align", pipeline_run_id, {
        "sft": sft_dir, "pages": pages_dir, "sids": sids_dir, "reward": reward_dir if grpo else None,
        "embeddings": embeddings_dir if grpo else None, "raw": None if grpo else raw_dir}, rank)
    torch.distributed.barrier()  # rank 0 has prepared the work folder
    # before any work: a volume that is not mounted fails at once
    ckpt_dir = stage_outputs.checkpoint_dir(cfg.run.checkpoint_root, out_dir, "align", pipeline_run_id)
    sid_map = SidMap.load(sids_dir)
    torch.manual_seed(cfg.run.seed)
    policy = GenRecModel.load(sft_dir)
    sid_map.require_fingerprint(policy.sid_fingerprint, f"the model in {sft_dir}")
    policy.to(device)
    # the prompts: a seeded sample of the usable training pages (align.max_prompts), drawn as the split streams past
    groups = ENGAGED if grpo else [g for level in PREFERENCE_LEVELS for g in level]
    pages, read = prompt_pages(iter_split_pages(pages_dir, "train"), groups, a.max_prompts, cfg.run.seed)
    if pages.empty:
        raise InputDataError(f"{pages_dir / 'pages'}: none of the {read} training pages has both a history and an item "
                             f"of {groups}: {a.method} has no prompt")
    if grpo:
        train = grpo_sr_training(cfg, policy, pages, sid_map, sft_dir, reward_dir, embeddings_dir, pages_dir, device)
    else:
        train = ldpo_training(cfg, policy, pages, sid_map, pages_dir, raw_dir, sft_dir, device)

    for name, rows in train.quarantined.items() if rank == 0 else ():
        (out_dir / "quarantine").mkdir(exist_ok=True)
        rows.to_parquet(out_dir / "quarantine" / name, index=False)
    loop = loop_config(cfg)
    (out_dir / "ds_config.json").write_text(json.dumps(ds_config(loop, world), indent=2))
    report = {**train.report, "world_size": world}
    track_ctx = tracking.stage_run(cfg, "align", pipeline_run_id) if rank == 0 else tracking.no_run()
    with track_ctx as track:
        track.params({"align": a.model_dump(mode="json")})
        track.json(ds_config(loop, world), "align/ds_config.json")
        result = run_loop(policy, train.loss_fn, train.make_batch,
                          split_by_rank(train.epoch_batches, rank, world, loop.grad_accum), loop, ckpt_dir,
                          lambda step, row: track.metrics({f"align/{k}": v for k, v in row.items()}, step=step),
                          train.count_tokens, desc=f"align ({a.method})")
        last = result.history[-1] if result.history else {}
        report.update({"steps": result.steps, "resumed_from_step": result.resumed_from_step,
                       "final_loss": result.final_loss,
                       **{f"final_{k}": v for k, v in last.items() if k not in ("step", "lr", "epoch", "tokens_per_s")}})
        with gathered_state(policy, a.zero_stage):
            if rank == 0:
                policy.save(out_dir / "model")
        if rank == 0:
            (out_dir / "report.json").write_text(json.dumps(report, indent=2))
            track.json(report, "align/report.json")
            track.artifact(out_dir / "model", "model")
    if rank == 0:
        stage_outputs.complete(out_dir)
    return report
