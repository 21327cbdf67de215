"""GRPO-SR's training set-up for the align stage (GenRec paper eq. 6-8).

Per step and prompt: G rollouts sampled from the policy (one item each); reward r = gate * r_pref with
calibration (genrec.align.rewards); advantages relative to the group; loss = policy term + alpha * NLL of
the page's engaged items, each given the prompt alone [+ KL to the frozen SFT model].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genrec.align.grpo_loss import engaged_items_nll, grpo_sr_loss, rollout_batch, token_logprobs
from genrec.align.rewards import ItemEmbeddings, group_advantages, hybrid_rewards
from genrec.align.rollouts import sample_rollouts
from genrec.align.training import AlignTraining
from genrec.config import PipelineConfig
from genrec.errors import InputDataError
from genrec.model.beam_search import PrefixMasks
from genrec.model.genrec_model import GenRecModel
from genrec.model.samples import batch_order, build_samples, collate, encode_sample
from genrec.model.vocab import SidMap
from genrec.reward.sim_model import SimRewardModel, history_rows

ENGAGED = ["order", "cart", "click"]


def _tokens(batch: dict, group: int, levels: int, with_nll: bool) -> int:
    """Tokens a micro-batch processes with gradient: per prompt, G rollouts and (with the NLL term) each engaged
    item (its page sample labels L + 1 tokens per item), each as the prompt then L codes."""
    prompt = ((batch["labels"] == -100) & (batch["attention_mask"] > 0)).sum(dim=1)
    rows = group + ((batch["labels"] != -100).sum(dim=1) // (levels + 1) if with_nll else 0)
    return int((rows * (prompt + levels)).sum())


def grpo_sr_training(cfg: PipelineConfig, policy: GenRecModel, pages: pd.DataFrame, sid_map: SidMap, sft_dir: Path,
                     reward_dir: Path, embeddings_dir: Path, pages_dir: Path, device: torch.device) -> AlignTraining:
    """Load the reward model, the item vectors (relevance gate) and the frozen reference (kl_coef > 0), and build
    the prompts: the training pages with a history and an engaged item."""
    a = cfg.align
    reward = SimRewardModel.load(reward_dir)
    sid_map.require_fingerprint(reward.sid_fingerprint, f"the reward model in {reward_dir}")
    reward.to(device)
    reference = None
    if a.kl_coef > 0:
        reference = GenRecModel.load(sft_dir).to(device)
        reference.requires_grad_(False)
    emb_ids, emb_vec = embeddings_dir / "item_ids.npy", embeddings_dir / "embeddings.npy"
    if not emb_ids.is_file() or not emb_vec.is_file():
        raise InputDataError(f"{embeddings_dir}: item_ids.npy / embeddings.npy not found (run embed-items first)")
    embeddings = ItemEmbeddings(np.load(emb_ids), np.load(emb_vec))

    samples, counts = build_samples(pages, "page", ENGAGED, cfg.model.max_history, cfg.sft.max_target_items)
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

    report = {"method": "grpo_sr", "prompts": len(samples), "group_size": G, "alpha": a.alpha, "gate": a.gate,
              "tau": a.tau, "calibrate": a.calibrate, "constrained": a.constrained, "kl_coef": a.kl_coef}
    return AlignTraining(loss_fn, make_batch,
                         lambda epoch: batch_order(lengths, a.prompts_per_step, cfg.run.seed, epoch, True),
                         lambda b: _tokens(b, G, levels, a.alpha > 0), report)
