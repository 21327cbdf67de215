"""Stage train-sft: training pages + SID map -> a GenRec model trained by page-wise next-token prediction.

Reads validate-pages' folder (pages/, split=train) and assign-sids' folder (sid_table.parquet,
codebooks.npz). Writes into `out_dir`: model/ (model.safetensors + genrec_model.json), checkpoints/
(resumable DeepSpeed state; a rerun resumes from the newest), ds_config.json and report.json.

Runs in one process, or in every process of a `torchrun` / `deepspeed` launch: rank 0 logs to MLflow
and writes the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from genrec import stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data.io import read_split_pages
from genrec.errors import InputDataError
from genrec.model.genrec_model import GenRecModel, build_model, catalog_buckets
from genrec.model.samples import batch_order, build_samples, encode_sample, epoch_batch
from genrec.model.vocab import SidMap
from genrec.train.deepspeed_loop import (LoopConfig, LoopResult, RankBatches, ds_config, gathered_state,
                                         init_distributed, run_loop, split_by_rank)
from genrec.train.sft_stream import StreamSpec, sft_stream


def loop_config(cfg: PipelineConfig) -> LoopConfig:
    s = cfg.sft
    return LoopConfig(micro_batch_size=s.micro_batch_size, grad_accum=s.grad_accum, lr=s.lr, weight_decay=s.weight_decay,
                      warmup_ratio=s.warmup_ratio, grad_clip=s.grad_clip, zero_stage=s.zero_stage, precision=s.precision,
                      epochs=s.epochs, max_steps=s.max_steps, checkpoint_every=s.checkpoint_every,
                      keep_checkpoints=s.keep_checkpoints, log_every=s.log_every, seed=cfg.run.seed)


@dataclass
class TrainingSet:
    """What a training run needs besides its loop settings: the fresh model, its samples (every one encoded, or
    this process's stream of micro-batches) and the sample counts (the start of report.json)."""

    model: GenRecModel
    encoded: list
    lengths: np.ndarray
    report: dict
    item_candidates: torch.Tensor | None = None  # the catalog's per-item rows, for sft.item_softmax_weight
    shuffle_seed: int | None = None  # sft.target_order=shuffled: the run's seed; None keeps the encoded order
    stream: RankBatches | None = None  # sft.data=stream: this process's micro-batches, already tensors

    def make_batch(self, indices: np.ndarray, epoch: int = 0) -> dict:
        """Tensors of the samples `indices` for `epoch` (samples.epoch_batch: targets shuffled by epoch when asked)."""
        return epoch_batch([self.encoded[i] for i in indices], indices, epoch, self.shuffle_seed, self.model.vocab)


def _fresh_model(cfg: PipelineConfig, sid_map: SidMap) -> GenRecModel:
    torch.manual_seed(cfg.run.seed)  # the initialisation is part of the run: a resumed or repeated run must match
    return build_model(cfg.model.size, cfg.model.pretrained_path, sid_map.sizes, cfg.model.token_merger,
                       sid_map.fingerprint(), cfg.model.attn_implementation, copy_head=cfg.model.copy_head,
                       dropout=cfg.model.dropout, hidden_dropout=cfg.model.hidden_dropout,
                       item_embedding_buckets=cfg.model.item_embedding_buckets)


def prepare_training(cfg: PipelineConfig, pages_dir: Path, sids_dir: Path, world: int = 1) -> TrainingSet:
    """A freshly initialised (seeded) model and its training samples: every one built and encoded here
    (sft.data=memory), or this process's stream of micro-batches (sft.data=stream; genrec.train.sft_stream)."""
    sid_map = SidMap.load(sids_dir)
    stream = None
    if cfg.sft.data == "stream":
        rank, world, device = init_distributed()
        window = cfg.sft.length_window if cfg.sft.length_grouped else 1
        spec = StreamSpec(cfg.sft.micro_batch_size, cfg.sft.loader_workers, cfg.sft.shuffle_buffer, window, cfg.run.seed)
        model = _fresh_model(cfg, sid_map)
        stream, counts = sft_stream(cfg, pages_dir, sid_map, model.vocab, spec, rank, world, device)
        encoded, mean_history = [], counts.pop("mean_history_items")
    else:
        samples, counts = _memory_samples(cfg, pages_dir)
        model = _fresh_model(cfg, sid_map)
        encoded = [encode_sample(s, sid_map, model.vocab, cfg.model.token_merger) for s in samples]
        mean_history = float(np.mean([len(s.history) for s in samples]))
    report = {"mode": cfg.sft.mode, "target_order": cfg.sft.target_order, "token_merger": cfg.model.token_merger,
              "copy_head": cfg.model.copy_head, "data": cfg.sft.data, **counts,
              "prompt_len_merged": mean_history + 2, "prompt_len_unmerged": mean_history * model.vocab.levels + 2,
              "n_parameters": sum(p.numel() for p in model.parameters()), "world_size": world}
    candidates = None
    if cfg.sft.item_softmax_weight > 0:
        candidates = catalog_buckets(sid_map.codes, model.vocab, cfg.model.item_embedding_buckets)
        report["item_softmax_candidates"] = len(candidates)
    shuffle_seed = cfg.run.seed if cfg.sft.target_order == "shuffled" else None  # the config allows it on pages only
    return TrainingSet(model, encoded, np.array([len(e[0]) for e in encoded], dtype=int), report, candidates,
                       shuffle_seed, stream)


def _memory_samples(cfg: PipelineConfig, pages_dir: Path) -> tuple[list, dict]:
    """Every training sample (at most sft.max_samples, a seeded subset) and the counts of report.json."""
    pages = read_split_pages(pages_dir, "train")
    samples, counts = build_samples(pages, cfg.sft.mode, cfg.sft.target_types, cfg.model.max_history,
                                    cfg.sft.max_target_items)
    if cfg.sft.max_samples and len(samples) > cfg.sft.max_samples:
        keep = np.sort(np.random.default_rng(cfg.run.seed).choice(len(samples), cfg.sft.max_samples, replace=False))
        samples = [samples[i] for i in keep]
    if not samples:
        raise InputDataError(f"{pages_dir / 'pages'}: no training sample (pages: {counts.pages}, without history: "
                             f"{counts.skipped_empty_history}, without a target item of {cfg.sft.target_types}: "
                             f"{counts.skipped_empty_target})")
    return samples, {"n_pages": counts.pages, "n_samples": len(samples),
                     "skipped_empty_history": counts.skipped_empty_history,
                     "skipped_empty_target": counts.skipped_empty_target,
                     "truncated_targets": counts.truncated_targets,
                     "mean_target_items": float(np.mean([len(s.target) for s in samples]))}


def train_model(cfg: PipelineConfig, data: TrainingSet, loop: LoopConfig, ckpt_dir: Path,
                on_log: Callable[[int, dict], None]) -> LoopResult:
    """Page-wise (or point-wise) NTP on the training set with the DeepSpeed loop: the stage's training step,
    also called by bench/gpu_sft.py."""
    rank, world, _ = init_distributed()
    if data.stream is not None:
        batches, make_batch = data.stream, lambda tensors: tensors  # built by the stream's workers
    else:
        def epoch_batches(epoch: int):  # (epoch, indices): make_batch orders shuffled targets by epoch
            return [(epoch, b) for b in
                    batch_order(data.lengths, cfg.sft.micro_batch_size, cfg.run.seed, epoch, cfg.sft.length_grouped)]

        batches = split_by_rank(epoch_batches, rank, world, loop.grad_accum)
        make_batch = lambda batch: data.make_batch(batch[1], batch[0])  # noqa: E731
    candidates = data.item_candidates

    def loss_fn(model, batch):
        nonlocal candidates
        if candidates is not None:
            candidates = candidates.to(batch["ids"].device)
        return model.loss(batch, cfg.sft.generator_loss_weight, cfg.sft.label_smoothing,
                          cfg.sft.item_softmax_weight, candidates)

    return run_loop(data.model, loss_fn, make_batch, batches, loop, ckpt_dir, on_log,
                    lambda b: int(b["attention_mask"].sum()), desc="train-sft")


def run_train_sft(cfg: PipelineConfig, pages_dir: str | Path, sids_dir: str | Path, out_dir: str | Path,
                  pipeline_run_id: str) -> dict:
    """Train the model on the training pages; returns the report (also report.json)."""
    pages_dir, sids_dir, out_dir = Path(pages_dir), Path(sids_dir), Path(out_dir)
    rank, world, _ = init_distributed()
    out_dir = stage_outputs.begin(out_dir, "train-sft", pipeline_run_id, {"pages": pages_dir, "sids": sids_dir}, rank)
    torch.distributed.barrier()  # rank 0 has prepared the work folder
    # before any work: a volume that is not mounted fails at once
    ckpt_dir = stage_outputs.checkpoint_dir(cfg.run.checkpoint_root, out_dir, "train-sft", pipeline_run_id)
    data = prepare_training(cfg, pages_dir, sids_dir, world)
    model, report = data.model, data.report
    loop = loop_config(cfg)
    (out_dir / "ds_config.json").write_text(json.dumps(ds_config(loop, world), indent=2))

    track_ctx = tracking.stage_run(cfg, "train-sft", pipeline_run_id) if rank == 0 else tracking.no_run()
    with track_ctx as track:
        track.params({"model": cfg.model.model_dump(mode="json"), "sft": cfg.sft.model_dump(mode="json")})
        track.json(ds_config(loop, world), "train/ds_config.json")
        track.metrics({k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        result = train_model(cfg, data, loop, ckpt_dir,
                             lambda step, row: track.metrics({f"train/{k}": v for k, v in row.items()}, step=step))
        report.update({"steps": result.steps, "resumed_from_step": result.resumed_from_step,
                       "final_loss": result.final_loss, "tokens_per_s": result.tokens_per_s})
        with gathered_state(model, cfg.sft.zero_stage):
            if rank == 0:
                model.save(out_dir / "model")
        if rank == 0:
            (out_dir / "report.json").write_text(json.dumps(report, indent=2))
            track.metrics({k: v for k, v in report.items() if k in ("steps", "final_loss", "tokens_per_s")})
            track.json(report, "train/report.json")
            track.artifact(out_dir / "model", "model")
    if rank == 0:
        stage_outputs.complete(out_dir)
    return report
