"""LDPO's training set-up for the align stage (RankGR's initial assessment phase; genrec.align.ldpo).

Per step: a micro-batch of training pages; each page's logged items by preference level plus up to
`align.ldpo.negatives` least preferred items: the page's pseudo-exposures when ingest's folder has them
(pseudo_exposures.parquet), else items sampled from the catalog (seeded by the batch, so a resumed run replays them);
loss = NTP over the page's logged items of sft.target_types + alpha * LDPO over the levels (on pi - pi_ref, the
log-ratio to the frozen SFT model, with align.ldpo.reference)
[+ rsp.weight * the rank head's BCE over the page's engaged items (ordered, carted, clicked), with align.rsp].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genrec.align.ldpo import (NEGATIVE_LEVEL, PSEUDO_LEVEL, isolated_items_batch, item_states, item_token_logprobs,
                               ldpo_loss, lower_pairs, ntp_loss, preference_pages, pseudo_exposures, rank_head_loss,
                               sample_negatives)
from genrec.align.training import AlignTraining
from genrec.config import PipelineConfig
from genrec.data import tables
from genrec.data.io import read_parquet
from genrec.data.schema import PSEUDO_EXPOSURES_FILE
from genrec.errors import InputDataError
from genrec.model.beam_search import PrefixMasks
from genrec.model.genrec_model import GenRecModel
from genrec.model.samples import batch_order
from genrec.model.vocab import SidMap

ENGAGED = ("order", "cart", "click")  # the items the rank head learns to pick out


def ldpo_training(cfg: PipelineConfig, policy: GenRecModel, pages: pd.DataFrame, sid_map: SidMap,
                  pages_dir: Path, raw_dir: Path | None, sft_dir: Path, device: torch.device) -> AlignTraining:
    """Build the preference pages of the training split and the NTP + LDPO loss (loading the frozen SFT model
    from `sft_dir` with align.ldpo.reference)."""
    a, lc = cfg.align, cfg.align.ldpo
    reference = None
    if lc.reference:
        reference = GenRecModel.load(sft_dir).to(device)
        reference.requires_grad_(False)
    pseudo, quarantined = None, {}
    if raw_dir is not None and tables.exists(raw_dir, PSEUDO_EXPOSURES_FILE):
        side_table = tables.locate(raw_dir, PSEUDO_EXPOSURES_FILE, "run ingest first")
        pseudo, bad = pseudo_exposures(read_parquet(side_table, "run ingest first").to_pandas(), sid_map.item_ids,
                                       side_table)
        if len(bad):
            quarantined[PSEUDO_EXPOSURES_FILE] = bad
    prefs, counts = preference_pages(pages, cfg.model.max_history, lc.max_items, pseudo)
    if not prefs:
        raise InputDataError(f"{pages_dir / 'pages'}: no training page has both a history and a logged item "
                             f"({counts.pages} pages): LDPO has nothing to rank")
    if lc.negatives == 0 and not any(len(set(p.levels)) > 1 for p in prefs):
        raise InputDataError(f"{pages_dir / 'pages'}: no training page has items of two preference levels and "
                             "align.ldpo.negatives is 0: the LDPO loss would be empty (set align.ldpo.negatives > 0)")
    hist_codes = [sid_map.item_codes(p.history, f"the history of page {p.page_id}") for p in prefs]
    catalog = sid_map.item_ids
    ntp_groups = set(cfg.sft.target_types)
    levels = policy.vocab.levels
    masks = None
    if cfg.align.rsp.enabled:
        torch.manual_seed(cfg.run.seed)
        policy.add_rank_head(tuple(cfg.align.rsp.lambdas), cfg.align.rsp.model_weight, cfg.align.rsp.model_feature)
        masks = PrefixMasks(sid_map.trie())

    def make_batch(indices):
        indices = np.asarray(indices, dtype=np.int64)
        rng = np.random.default_rng([cfg.run.seed, int(indices[0]), int(indices.sum()), len(indices)])
        item_codes, item_level, ntp, engaged = [], [], [], []
        for i in indices:
            p = prefs[i]
            if p.pseudo:
                negatives, level = p.pseudo[:lc.negatives], PSEUDO_LEVEL
            else:
                negatives, level = (sample_negatives(rng, catalog, p.items, lc.negatives) if lc.negatives else []), \
                    NEGATIVE_LEVEL
            item_codes.append(sid_map.item_codes(p.items + negatives, f"the items of page {p.page_id}"))
            item_level += p.levels + [level] * len(negatives)
            ntp += [g in ntp_groups for g in p.groups] + [False] * len(negatives)
            engaged += [g in ENGAGED for g in p.groups] + [False] * len(negatives)
        b = isolated_items_batch([hist_codes[i] for i in indices], item_codes, policy.vocab, policy.token_merger)
        b["item_level"] = torch.as_tensor(item_level, dtype=torch.int64)
        b["ntp"] = torch.as_tensor(ntp, dtype=torch.bool)
        b["engaged"] = torch.as_tensor(engaged, dtype=torch.bool)
        return b

    def loss_fn(model, batch):
        states = item_states(model, batch)
        token_logp = item_token_logprobs(model, batch, states)
        scores = token_logp.sum(dim=1)
        l_ntp = ntp_loss(token_logp, batch["ntp"])
        pref_scores = scores
        if reference is not None:
            with torch.no_grad():
                ref_scores = item_token_logprobs(reference, batch).sum(dim=1)
            pref_scores = scores - ref_scores
        l_ldpo = ldpo_loss(pref_scores, batch["item_level"], batch["item_row"], lc.beta)
        with torch.no_grad():  # share of (preferred, less preferred) item pairs of a page ordered right by pi
            lower = lower_pairs(batch["item_level"], batch["item_row"])
            right = (scores.unsqueeze(1) > scores.unsqueeze(0)) & lower
            pair_acc = float(right.sum() / lower.sum().clamp(min=1))
        loss = l_ntp + lc.alpha * l_ldpo
        stats = {"loss_ntp": float(l_ntp.detach()), "loss_ldpo": float(l_ldpo.detach()), "pair_accuracy": pair_acc}
        if model.rank is not None:
            l_rsp, top1, model_top1 = rank_head_loss(model, batch, states, batch["engaged"], masks)
            loss = loss + cfg.align.rsp.weight * l_rsp
            stats["loss_rsp"] = float(l_rsp.detach())
            if np.isfinite(top1):  # a batch without an engaged item has none
                stats["rsp_top1"], stats["model_top1"] = top1, model_top1
        return loss, stats

    lengths = np.array([len(p.history) + (len(p.items) + lc.negatives) * (levels - 1) for p in prefs])
    report = {"method": "ldpo", "prompts": len(prefs), "pages": counts.pages,
              "skipped_empty_history": counts.skipped_empty_history, "skipped_no_item": counts.skipped_no_item,
              "truncated_pages": counts.truncated, "mean_logged_items": float(np.mean([len(p.items) for p in prefs])),
              "negatives": lc.negatives, "alpha": lc.alpha, "beta": lc.beta, "reference": lc.reference,
              "rank_head": cfg.align.rsp.enabled,
              "rsp_model_weight": cfg.align.rsp.model_weight if cfg.align.rsp.enabled else None,
              "rsp_model_feature": cfg.align.rsp.model_feature if cfg.align.rsp.enabled else None,
              "pages_with_pseudo_exposures": sum(bool(p.pseudo) for p in prefs),
              "pseudo_exposures_quarantined": int(sum(len(q) for q in quarantined.values()))}
    return AlignTraining(loss_fn, make_batch,
                         lambda epoch: batch_order(lengths, a.prompts_per_step, cfg.run.seed, epoch, True),
                         lambda b: int(b["prompt_mask"].sum()) + len(b["item_row"]) * (levels - 1), report,
                         quarantined)
