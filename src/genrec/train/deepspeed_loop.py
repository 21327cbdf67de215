"""A DeepSpeed training loop shared by the trainers: distributed set-up, ds_config, warm-up + cosine schedule,
deterministic batches, periodic resumable checkpoints, per-step logging.

One process on CPU by default (gloo); under `torchrun` / `deepspeed` every process runs this same code
and reads its own micro-batches (RankBatches: a share of one list, or its own stream). Data order depends only on
(seed, epoch),
and each checkpoint holds every process's torch RNG state (dropout masks), so a run resumed from a checkpoint
replays exactly the steps the killed run would have taken.

Checkpoints are DeepSpeed's own (model, optimizer, scheduler and our position in the data); they are
trusted local training state. The released model is written separately as safetensors.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from genrec.errors import StorageError


@dataclass
class LoopConfig:
    micro_batch_size: int
    grad_accum: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    grad_clip: float
    zero_stage: int
    precision: str  # auto | fp32 | bf16
    epochs: int
    max_steps: int
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int
    seed: int


@dataclass
class LoopResult:
    steps: int
    resumed_from_step: int
    final_loss: float
    tokens_per_s: float
    history: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class RankBatches:
    """This process's micro-batches: `per_epoch` of them in every epoch (the same on every rank, so that the ranks
    take the same optimizer steps), and `read(epoch, skip)`, the micro-batches of `epoch` after its first `skip`, in
    order. A resumed run reads from the micro-batch it stopped at, so `read` must give the same micro-batches for the
    same (epoch, skip) in every run."""

    per_epoch: int
    read: Callable[[int, int], Iterator]


def split_by_rank(epoch_batches: Callable[[int], list], rank: int, world: int, grad_accum: int) -> RankBatches:
    """RankBatches from one list of micro-batches for all processes (`epoch_batches(epoch)`, the same on every rank):
    of each optimizer step's grad_accum x world micro-batches, rank r takes the r-th, (r + world)-th, ... The last
    micro-batches of an epoch that do not fill an optimizer step are left out."""
    per_step = grad_accum * world
    n = len(epoch_batches(0))
    if n < per_step:
        raise ValueError(f"too few samples for one optimizer step: {n} micro-batches, need grad_accum x processes = "
                         f"{per_step}")
    usable = n // per_step * per_step

    def read(epoch: int, skip: int) -> Iterator:
        return iter(epoch_batches(epoch)[rank:usable:world][skip:])

    return RankBatches(usable // world, read)


class _LossModule(torch.nn.Module):
    """DeepSpeed drives `forward`; ours returns the loss of a batch (hooks of ZeRO-3 fire as usual)."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, batch):
        return self._loss_fn(self.model, batch)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). Without a launcher: a one-process group on gloo (CPU) or nccl (GPU)."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(_free_port())})
    cuda = torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def use_bf16(precision: str) -> bool:
    if precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def ds_config(cfg: LoopConfig, world: int) -> dict:
    """The DeepSpeed config of a run (also logged to MLflow)."""
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": use_bf16(cfg.precision)},
        # torch's AdamW (fused on GPU): no DeepSpeed op to compile, identical update on CPU and GPU.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over warmup_ratio of the steps, then cosine decay to 0 (the paper's schedule)."""
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _rng_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rng_state_rank{rank}.pt"


def _save_rng(tag_dir: Path, rank: int, device: torch.device) -> None:
    """This process's torch RNG state (CPU, and the GPU's), so a resumed run draws the same dropout masks.
    One file per rank: DeepSpeed's client_state is written by rank 0 only."""
    tag_dir.mkdir(parents=True, exist_ok=True)
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    torch.save(state, _rng_file(tag_dir, rank))


def _restore_rng(tag_dir: Path, rank: int, device: torch.device) -> None:
    path = _rng_file(tag_dir, rank)
    if not path.is_file():  # a checkpoint from before the RNG state was saved, or from another number of processes
        warnings.warn(f"{path} not found; the resumed run draws other dropout masks than the killed run would have")
        return
    state = torch.load(path, weights_only=True)
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(engine, ckpt_dir: Path, step: int, rank: int, device: torch.device) -> None:
    """Save checkpoint step-<step>; if the write fails (a full disk), remove it, point `latest` back at the previous
    one and raise StorageError: the previous checkpoint still loads, so a rerun with space resumes from it."""
    tag_dir = ckpt_dir / f"step-{step}"
    previous = (ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").is_file() else ""
    try:
        _save_rng(tag_dir, rank, device)  # before DeepSpeed writes `latest`
        engine.save_checkpoint(str(ckpt_dir), tag=f"step-{step}", client_state={"step": step})
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
        shutil.rmtree(tag_dir, ignore_errors=True)
        if rank == 0:
            try:
                if previous:
                    (ckpt_dir / "latest").write_text(previous)
                else:
                    (ckpt_dir / "latest").unlink(missing_ok=True)
            except OSError:
                pass
        intact = f"the previous checkpoint ({previous}) is intact" if previous else "there is no earlier checkpoint"
        raise StorageError(f"could not write checkpoint step-{step} to {ckpt_dir}: {exc}. Nothing of it was kept and "
                           f"{intact}: free space (or give run.checkpoint_root more) and rerun to resume") from exc


def _prune(ckpt_dir: Path, keep: int) -> None:
    tags = sorted((p for p in ckpt_dir.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def run_loop(model: torch.nn.Module, loss_fn: Callable, make_batch: Callable[[object], dict], batches: RankBatches,
             cfg: LoopConfig, ckpt_dir: Path, on_log: Callable[[int, dict], None], count_tokens: Callable[[dict], int],
             desc: str = "train") -> LoopResult:
    """Train `model` with DeepSpeed. `batches` gives this process's micro-batches (split_by_rank, or a stream);
    `make_batch(micro_batch)` builds tensors; `loss_fn(model, batch)` returns the loss.
    Resumes from `ckpt_dir` when it holds a checkpoint. Returns when max_steps or all epochs are done."""
    import deepspeed

    rank, world, device = init_distributed()
    steps_per_epoch = batches.per_epoch // cfg.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(f"too few samples for one optimizer step: {batches.per_epoch} micro-batches of "
                         f"{cfg.micro_batch_size} per process, need grad_accum = {cfg.grad_accum}")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    torch.manual_seed(cfg.seed)
    wrapped = _LossModule(model, loss_fn)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, cfg.warmup_ratio))
    engine, _, _, _ = deepspeed.initialize(model=wrapped, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config(cfg, world))
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    if (ckpt_dir / "latest").is_file():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        start = int(client["step"])
        _restore_rng(ckpt_dir / f"step-{start}", rank, device)
    dtype = torch.bfloat16 if use_bf16(cfg.precision) else None
    history: list[dict] = []
    step, window_loss, window_tokens, t0, last_loss = start, [], 0, time.time(), float("nan")
    window_stats: list[dict] = []
    bar = tqdm(total=total, initial=start, desc=desc, unit="step", disable=rank != 0)
    stream, stream_epoch = iter(()), -1
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if stream_epoch != epoch:  # an epoch's order is computed once; a resumed run starts inside it
            stream, stream_epoch = batches.read(epoch, in_epoch * cfg.grad_accum), epoch
        for _ in range(cfg.grad_accum):
            micro = next(stream, None)
            if micro is None:
                raise RuntimeError(f"the micro-batches of epoch {epoch} ran out at step {step}: the source promised "
                                   f"{batches.per_epoch} per epoch")
            batch = {n: t.to(device) for n, t in make_batch(micro).items()}
            window_tokens += count_tokens(batch)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = engine(batch)
            loss, stats = out if isinstance(out, tuple) else (out, {})
            window_stats.append(stats)
            engine.backward(loss)
            engine.step()
            window_loss.append(float(loss.detach()))
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            elapsed = max(time.time() - t0, 1e-9)
            tokens = torch.tensor([window_tokens], dtype=torch.float64, device=device)  # nccl reduces GPU tensors only
            torch.distributed.all_reduce(tokens)
            last_loss = float(np.mean(window_loss)) if window_loss else float("nan")
            row = {"loss": last_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": float(tokens) / elapsed,
                   "epoch": epoch + (in_epoch + 1) / steps_per_epoch,
                   **{k: float(np.mean([s[k] for s in window_stats if k in s])) for k in window_stats[-1]}}
            history.append({"step": step, **row})
            if rank == 0:
                on_log(step, row)
                bar.set_postfix(loss=f"{last_loss:.3f}")
            window_loss, window_stats, window_tokens, t0 = [], [], 0, time.time()
        if step % cfg.checkpoint_every == 0 and step < total:
            save_checkpoint(engine, ckpt_dir, step, rank, device)
            if rank == 0:
                _prune(ckpt_dir, cfg.keep_checkpoints)
    bar.close()
    tps = float(np.mean([h["tokens_per_s"] for h in history])) if history else float("nan")
    return LoopResult(step, start, last_loss, tps, history)


def gathered_state(model: torch.nn.Module, zero_stage: int):
    """A context in which every rank sees the full parameters (ZeRO-3 partitions them)."""
    import contextlib

    import deepspeed

    if zero_stage == 3:
        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()
