"""Stage align: the SFT model + the reward model -> a model aligned by GRPO-SR (paper eq. 6-8).

Reads train-sft's folder (model/), train-reward's folder (reward_model/), validate-pages' folder (the
training pages are the prompts), assign-sids' folder and embed-items' folder (item vectors for the
relevance gate). Writes into `out_dir`: model/ (the aligned model, same format as train-sft's),
checkpoints/ (resumable; a rerun resumes), ds_config.json and report.json.

Per step and prompt: G rollouts sampled from the policy (one item each); reward r = gate * r_pref with
calibration (genrec.align.rewards); advantages relative to the group; loss = policy term + alpha * NLL of
the page's engaged items, each given the prompt alone [+ KL]. Through the same DeepSpeed loop as SFT (ZeRO, bf16 on GPU, checkpoints).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from genrec import stage_outputs, tracking
from genrec.align.grpo_loss import engaged_items_nll, grpo_sr_loss, rollout_batch, token_logprobs
from genrec.align.rewards import ItemEmbeddings, group_advantages, hybrid_rewards
from genrec.align.rollouts import sample_rollouts
from genrec.config import PipelineConfig
from genrec.data.io import read_split_pages
from genrec.errors import InputDataError
from genrec.model.beam_search import PrefixMasks
from genrec.model.genrec_model import GenRecModel
from genrec.model.samples import batch_order, build_samples, collate, encode_sample
from genrec.model.vocab import SidMap
from genrec.reward.sim_model import SimRewardModel, history_rows
from genrec.train.deepspeed_loop import LoopConfig, ds_config, gathered_state, init_distributed, run_loop

ENGAGED = ["order", "cart", "click"]


def loop_config(cfg: PipelineConfig) -> LoopConfig:
    a = cfg.align
    return LoopConfig(micro_batch_size=a.prompts_per_step, grad_accum=a.grad_accum, lr=a.lr, weight_decay=a.weight_decay,
                      warmup_ratio=a.warmup_ratio, grad_clip=a.grad_clip, zero_stage=a.zero_stage, precision=a.precision,
                      epochs=1, max_steps=a.max_steps, checkpoint_every=a.checkpoint_every,
                      keep_checkpoints=a.keep_checkpoints, log_every=a.log_every, seed=cfg.run.seed)


def _load_checked(sft_dir: Path, reward_dir: Path, sid_map: SidMap) -> tuple[GenRecModel, SimRewardModel]:
    policy, reward = GenRecModel.load(sft_dir), SimRewardModel.load(reward_dir)
    sid_map.require_fingerprint(policy.sid_fingerprint, f"the model in {sft_dir}")
    sid_map.require_fingerprint(reward.sid_fingerprint, f"the reward model in {reward_dir}")
    return policy, reward


def _tokens(batch: dict, group: int, levels: int, with_nll: bool) -> int:
    """Tokens a micro-batch processes with gradient: per prompt, G rollouts and (with the NLL term) each engaged
    item (its page sample labels L + 1 tokens per item), each as the prompt then L codes."""
    prompt = ((batch["labels"] == -100) & (batch["attention_mask"] > 0)).sum(dim=1)
    rows = group + ((batch["labels"] != -100).sum(dim=1) // (levels + 1) if with_nll else 0)
    return int((rows * (prompt + levels)).sum())


def run_align(cfg: PipelineConfig, sft_dir: str | Path, reward_dir: str | Path, pages_dir: str | Path,
              sids_dir: str | Path, embeddings_dir: str | Path, out_dir: str | Path, pipeline_run_id: str) -> dict:
    """Align the SFT model by GRPO-SR; returns the report (also report.json)."""
    sft_dir, reward_dir, pages_dir, sids_dir, embeddings_dir, out_dir = map(
        Path, (sft_dir, reward_dir, pages_dir, sids_dir, embeddings_dir, out_dir))
    a = cfg.align
    rank, world, device = init_distributed()
    stage_outputs.begin(out_dir, "align", pipeline_run_id, {"sft": sft_dir, "reward": reward_dir, "pages": pages_dir, "sids": sids_dir,
                                                     "embeddings": embeddings_dir})
    # before any work: a volume that is not mounted fails at once
    ckpt_dir = stage_outputs.checkpoint_dir(cfg.run.checkpoint_root, out_dir, "align", pipeline_run_id)
    sid_map = SidMap.load(sids_dir)
    torch.manual_seed(cfg.run.seed)
    policy, reward = _load_checked(sft_dir, reward_dir, sid_map)
    reward.to(device)
    reference = None
    if a.kl_coef > 0:
        reference = GenRecModel.load(sft_dir).to(device)
        reference.requires_grad_(False)
    emb_ids, emb_vec = embeddings_dir / "item_ids.npy", embeddings_dir / "embeddings.npy"
    if not emb_ids.is_file() or not emb_vec.is_file():
        raise InputDataError(f"{embeddings_dir}: item_ids.npy / embeddings.npy not found (run embed-items first)")
    embeddings = ItemEmbeddings(np.load(emb_ids), np.load(emb_vec))

    pages = read_split_pages(pages_dir, "train")
    samples, counts = build_samples(pages, "page", ENGAGED, cfg.model.max_history, cfg.sft.max_target_items)
    if a.max_prompts and len(samples) > a.max_prompts:
        keep = np.sort(np.random.default_rng(cfg.run.seed).choice(len(samples), a.max_prompts, replace=False))
        samples = [samples[i] for i in keep]
    if not samples:
        raise InputDataError(f"{pages_dir / 'pages'}: no training page has both a history and an engaged item "
                             f"({counts.pages} pages): GRPO-SR has no prompt")
    long_history = pages.set_index("page_id").loc[[s.page_id for s in samples], "history_items"]
    reward_hist = history_rows([list(h) for h in long_history], sid_map, cfg.reward.max_history, "a prompt's history")
    hist_codes = [sid_map.item_codes(s.history, f"the history of page {s.page_id}") for s in samples]
    encoded = [encode_sample(s, sid_map, policy.vocab, policy.token_merger) for s in samples]
    target_codes = [sid_map.item_codes(s.target, f"the engaged items of page {s.page_id}") for s in samples]
    lengths = np.array([len(e[0]) for e in encoded])
    masks = PrefixMasks(sid_map.trie()) if a.constrained else None
    G, levels = a.group_size, policy.vocab.levels

    def loss_fn(model, batch):
        idx = batch["prompt_idx"].cpu().numpy()
        gen = torch.Generator(device=device).manual_seed(int(cfg.run.seed * 1_000_003 + int(idx.sum()) * 7919 + int(idx[0])))
        codes, items = sample_rollouts(model, [hist_codes[i] for i in idx], sid_map, G, a.temperature, a.constrained,
                                       masks, gen)
        valid = items >= 0
        rows = np.zeros(items.shape, np.int64)
        rows[valid] = sid_map.rows(items[valid]) + 1
        r_pref = reward.score(reward_hist[idx].repeat_interleave(G, dim=0).to(device),
                              torch.from_numpy(rows.reshape(-1)).to(device)).reshape(items.shape)
        relevance = embeddings.relevance([samples[i].history for i in idx], items, a.relevance_recent)
        hits = np.stack([np.isin(row, samples[i].target) for i, row in zip(idx, items)])
        rewards = hybrid_rewards(r_pref, relevance, valid, hits, a.tau, a.gate, a.calibrate)
        adv = torch.from_numpy(group_advantages(rewards).reshape(-1)).float().to(device)
        rb = {k: v.to(device) for k, v in rollout_batch([hist_codes[i] for i in idx], codes, policy.vocab,
                                                          policy.token_merger).items()}
        logp = token_logprobs(model, rb, levels)
        nll = engaged_items_nll(model, [hist_codes[i] for i in idx], [target_codes[i] for i in idx]) \
            if a.alpha > 0 else None
        ref = None
        if reference is not None:
            with torch.no_grad():
                ref = token_logprobs(reference, rb, levels)
        loss, terms = grpo_sr_loss(logp, adv, nll, a.alpha, ref, a.kl_coef)
        stats = {"reward_mean": float(rewards.mean()), "reward_max": float(rewards.max()),
                 "r_pref_mean": float(r_pref[valid].mean()) if valid.any() else 0.0,
                 "invalid_share": float(1 - valid.mean()), "gated_share": float((valid & (relevance <= a.tau)).mean()),
                 "hit_share": float(hits.mean()), "zero_advantage_groups": float((rewards.std(1) <= 1e-6).mean()),
                 **terms}
        return loss, stats

    def make_batch(indices):
        b = collate([encoded[i] for i in indices], policy.vocab.pad)
        b["prompt_idx"] = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return b

    loop = loop_config(cfg)
    (out_dir / "ds_config.json").write_text(json.dumps(ds_config(loop, world), indent=2))
    report = {"prompts": len(samples), "group_size": G, "alpha": a.alpha, "gate": a.gate, "tau": a.tau,
              "calibrate": a.calibrate, "constrained": a.constrained, "kl_coef": a.kl_coef, "world_size": world}
    track_ctx = tracking.stage_run(cfg, "align", pipeline_run_id) if rank == 0 else tracking.no_run()
    with track_ctx as track:
        track.params({"align": a.model_dump(mode="json")})
        track.json(ds_config(loop, world), "align/ds_config.json")
        result = run_loop(policy, loss_fn, make_batch,
                          lambda epoch: batch_order(lengths, a.prompts_per_step, cfg.run.seed, epoch, True),
                          loop, ckpt_dir,
                          lambda step, row: track.metrics({f"align/{k}": v for k, v in row.items()}, step=step),
                          lambda b: _tokens(b, G, levels, a.alpha > 0), desc="align")
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
