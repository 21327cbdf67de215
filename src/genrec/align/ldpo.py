"""RankGR's initial assessment phase: listwise direct preference optimisation (LDPO) over a page's items.

A page ranks its items in preference levels, most preferred first (`PREFERENCE_LEVELS`): ordered, then
carted or clicked, then exposed without engagement, then the page's pseudo-exposures (items the serving system
ranked for the request but did not show; the simulator logs them as a side table). A page without them gets
`n` negatives sampled uniformly from the catalog instead, outside the page's own items: the lowest level.

One training row per page: the prompt (the history), then every candidate item's first L - 1 code tokens.
An attention mask lets each item's tokens see the prompt and the item's own earlier tokens only (RankGR eq. 7),
and each item's tokens take the positions right after the prompt, so an item is scored exactly as if it
followed the prompt alone (as beam search decodes it) and changing one item leaves every other item's
log-probabilities unchanged.

    pi(i)  = sum_l log p(code_l of i | prompt, earlier codes of i)                            (item score)
    L_LDPO = mean over pages and items k above the page's lowest level of
             -log( e^{beta pi(k)} / (e^{beta pi(k)} + sum_{i in lower levels} e^{beta pi(i)}) )  (eq. 8)
    L      = L_NTP + alpha * L_LDPO,  L_NTP: NLL per code token of the page's logged items of sft.target_types

With a copy head, log p(item) is the mixture's (genrec.model.copy_head), as decoding ranks items.
`rank_head_loss` trains RankGR's rank head (genrec.model.rank_head) on the same forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from genrec.errors import InputDataError
from genrec.model.beam_search import PrefixMasks, tree_mask
from genrec.model.copy_head import copy_prefix_logmass, history_slots, mixture_token_logprobs
from genrec.model.genrec_model import GenRecModel
from genrec.model.rank_head import keep_candidates, rank_head_bce
from genrec.model.samples import GROUP_COLUMNS, encode_prompt
from genrec.model.vocab import SidVocab

# Preference levels of the logged items, most preferred first; then pseudo-exposed items, or sampled negatives
# on a page without them.
PREFERENCE_LEVELS: tuple[tuple[str, ...], ...] = (("order",), ("cart", "click"), ("expose",))
PSEUDO_LEVEL = len(PREFERENCE_LEVELS)
NEGATIVE_LEVEL = PSEUDO_LEVEL + 1


@dataclass
class PreferencePage:
    """A page's history and its logged items by preference level (0 = most preferred)."""

    page_id: str
    history: list[int]  # item ids, chronological, the last max_history
    items: list[int]  # logged item ids, most preferred first, each once
    levels: list[int]  # level of each item (an index into PREFERENCE_LEVELS)
    groups: list[str]  # the item's group (order, cart, click, expose)
    pseudo: list[int] = field(default_factory=list)  # pseudo-exposed items, best ranked first, none of the above


@dataclass
class PreferenceCounts:
    pages: int = 0
    kept: int = 0
    skipped_empty_history: int = 0
    skipped_no_item: int = 0
    truncated: int = 0


def preference_pages(pages: pd.DataFrame, max_history: int, max_items: int,
                     pseudo: dict[str, list[int]] | None = None) -> tuple[list[PreferencePage], PreferenceCounts]:
    """Pages -> their items by preference level (an item is counted once, at its strongest level). Pages without
    history or without any logged item are skipped and counted; beyond `max_items` the weakest items are cut.
    `pseudo`: page id -> pseudo-exposed items, best first (`pseudo_exposures`); those the page logged are left out."""
    counts = PreferenceCounts(pages=len(pages))
    out = []
    for page in pages.itertuples(index=False):
        page = page._asdict()
        history = [int(i) for i in page["history_items"]][-max_history:]
        seen, items, levels, groups = set(), [], [], []
        for level, level_groups in enumerate(PREFERENCE_LEVELS):
            for group in level_groups:
                for i in page[GROUP_COLUMNS[group]]:
                    if int(i) not in seen:
                        seen.add(int(i))
                        items.append(int(i))
                        levels.append(level)
                        groups.append(group)
        if not history:
            counts.skipped_empty_history += 1
            continue
        if not items:
            counts.skipped_no_item += 1
            continue
        if len(items) > max_items:
            counts.truncated += 1
            items, levels, groups = items[:max_items], levels[:max_items], groups[:max_items]
        extra = [i for i in (pseudo or {}).get(page["page_id"], []) if i not in seen]
        out.append(PreferencePage(page["page_id"], history, items, levels, groups, extra))
    counts.kept = len(out)
    return out, counts


def pseudo_exposures(table: pd.DataFrame, known_items: np.ndarray, source: str
                     ) -> tuple[dict[str, list[int]], pd.DataFrame]:
    """A pseudo-exposure side table (request_id, item_id, rank) -> ({page id: items, best ranked first}, the rows
    refused, with a `quarantine_reason`: a missing value, or an item with no semantic ID). Missing columns are an
    error naming the file."""
    missing = {"request_id", "item_id", "rank"} - set(table.columns)
    if missing:
        raise InputDataError(f"{source}: columns {sorted(missing)} missing (expected request_id, item_id, rank)")
    reason = pd.Series("", index=table.index, dtype=object)
    reason[table[["request_id", "item_id", "rank"]].isna().any(axis=1)] = "missing value"
    unknown = (reason == "") & ~table["item_id"].isin(known_items)
    reason[unknown] = "item has no semantic ID"
    bad = table[reason != ""].assign(quarantine_reason=reason[reason != ""])
    good = table[reason == ""].sort_values(["request_id", "rank"], kind="stable")
    pages = "r" + good["request_id"].astype("int64").astype(str)  # sessionize's page id of a request
    by_page = good["item_id"].astype("int64").groupby(pages.to_numpy(), sort=False).agg(list).to_dict()
    return by_page, bad


def sample_negatives(rng: np.random.Generator, catalog: np.ndarray, exclude: list[int], n: int) -> list[int]:
    """`n` distinct items drawn uniformly from `catalog` outside `exclude` (fewer when the catalog runs out)."""
    pool = catalog[~np.isin(catalog, exclude)]
    return [int(i) for i in rng.choice(pool, size=min(n, len(pool)), replace=False)]


def isolated_items_batch(history_codes: list[np.ndarray], item_codes: list[np.ndarray], vocab: SidVocab,
                         token_merger: bool) -> dict[str, torch.Tensor]:
    """One row per prompt: the prompt, then for each of its items (item_codes[r], (n_r, L)) that item's first
    L - 1 code tokens, each item on the positions right after the prompt and seeing only the prompt and itself.

    Returns ids (B, T, L), is_item (B, T), visible (B, 1, T, T) bool (True: may attend), position_ids (B, T),
    prompt_mask (B, T) and, per item m (rows in prompt order): item_row (M,), query_pos (M, L) (the position whose
    output predicts code l) and item_tokens (M, L) (the codes' token ids)."""
    levels = vocab.levels
    rows = []
    for hist, items in zip(history_codes, item_codes):
        p_ids, p_item = encode_prompt(hist, vocab, token_merger)
        tokens = vocab.code_tokens(np.asarray(items).reshape(-1, levels))  # (n, L)
        rows.append((p_ids, p_item, tokens))
    length = max(len(p) + len(t) * (levels - 1) for p, _, t in rows)
    b = len(rows)
    ids = np.full((b, length, levels), vocab.pad, dtype=np.int64)
    is_item = np.zeros((b, length), bool)
    visible = np.zeros((b, 1, length, length), bool)
    visible[:, 0] = np.eye(length, dtype=bool)  # padding sees itself only (no row without a key)
    position = np.zeros((b, length), dtype=np.int64)
    prompt_mask = np.zeros((b, length), bool)
    item_row, query_pos, item_tokens = [], [], []
    for r, (p_ids, p_item, tokens) in enumerate(rows):
        p = len(p_ids)
        ids[r, :p], is_item[r, :p], prompt_mask[r, :p] = p_ids, p_item, True
        visible[r, 0, :p, :p] = np.tril(np.ones((p, p), bool))
        position[r, :p] = np.arange(p)
        for k, tok in enumerate(tokens):
            start = p + k * (levels - 1)
            span = np.arange(start, start + levels - 1)
            ids[r, span] = np.repeat(tok[:-1, None], levels, axis=1)
            position[r, span] = np.arange(p, p + levels - 1)
            own = slice(start, start + levels - 1)
            visible[r, 0, own, :p] = True
            visible[r, 0, own, own] = np.tril(np.ones((levels - 1,) * 2, bool))
            item_row.append(r)
            query_pos.append(np.concatenate([[p - 1], span]))
            item_tokens.append(tok)
    return {"ids": torch.from_numpy(ids), "is_item": torch.from_numpy(is_item), "visible": torch.from_numpy(visible),
            "position_ids": torch.from_numpy(position), "prompt_mask": torch.from_numpy(prompt_mask),
            "item_row": torch.as_tensor(item_row, dtype=torch.int64),
            "query_pos": torch.from_numpy(np.stack(query_pos).astype(np.int64)),
            "item_tokens": torch.from_numpy(np.stack(item_tokens).astype(np.int64))}


@dataclass
class ItemStates:
    """One forward pass over an `isolated_items_batch`."""

    hidden: torch.Tensor  # (B, T, d) the backbone's last hidden states
    logits: torch.Tensor  # (M, L, V) at each item's predicting positions


def item_states(model: GenRecModel, batch: dict[str, torch.Tensor]) -> ItemStates:
    """Run the model over an `isolated_items_batch` (with gradient)."""
    dtype = model.lm.get_input_embeddings().weight.dtype
    out = model(batch["ids"], batch["is_item"], tree_mask(batch["visible"], dtype), position_ids=batch["position_ids"])
    logits = model.lm.lm_head(out.hidden[batch["item_row"].unsqueeze(1), batch["query_pos"]]).float()
    return ItemStates(out.hidden, logits)


def item_token_logprobs(model: GenRecModel, batch: dict[str, torch.Tensor], states: ItemStates | None = None
                        ) -> torch.Tensor:
    """(M, L) log p(code_l | prompt, earlier codes) of every item of an `isolated_items_batch`, with gradient;
    with a copy head the mixture's per-code conditionals (their sum is the item's log-probability)."""
    states = states or item_states(model, batch)
    rows = batch["item_row"]
    logp = torch.log_softmax(states.logits, dim=-1).gather(-1, batch["item_tokens"].unsqueeze(-1)).squeeze(-1)
    if model.copy is None:
        return logp
    hidden = states.hidden
    slots = history_slots(batch["ids"], batch["is_item"], batch["prompt_mask"], model.vocab)
    slot_h = torch.gather(hidden, 1, slots.pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    prompt_end = batch["prompt_mask"].sum(dim=1) - 1
    query_h = hidden[torch.arange(len(prompt_end), device=logp.device), prompt_end]
    log_attn, log_g, log_1m_g = model.copy(query_h, slot_h, slots.valid, slots.recency)
    mass = copy_prefix_logmass(log_attn[rows], slots.codes[rows], _item_codes(model, batch))
    return mixture_token_logprobs(logp, mass, log_g[rows], log_1m_g[rows])


def _item_codes(model: GenRecModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    starts = torch.tensor([model.vocab.level_start(i) for i in range(model.vocab.levels)],
                          device=batch["item_tokens"].device)
    return batch["item_tokens"] - starts


def rank_head_logits(model: GenRecModel, batch: dict[str, torch.Tensor], states: ItemStates, idx: torch.Tensor,
                     level: int, candidates: torch.Tensor) -> torch.Tensor:
    """The rank head's logits (R, C) for candidate codes (R, C) at `level` of items `idx` (R,): keys are what the
    position predicting that level sees (the prompt and the item's earlier codes), as in decoding; with
    model_feature, the backbone's log-probability of each candidate (a feature: no gradient through it)."""
    rows, query = batch["item_row"][idx], batch["query_pos"][idx, level]
    tokens = candidates + model.vocab.level_start(level)
    code_logp = None
    if model.rank.model_feature:
        code_logp = torch.log_softmax(states.logits[idx, level].detach().float(), dim=-1).gather(1, tokens)
    code_emb = model.lm.get_input_embeddings()(tokens)
    return model.rank(code_emb, states.hidden[rows], batch["visible"][rows, 0, query], states.hidden[rows, query],
                      code_logp)


def rank_head_loss(model: GenRecModel, batch: dict[str, torch.Tensor], states: ItemStates, trained: torch.Tensor,
                   masks: PrefixMasks | None) -> tuple[torch.Tensor, float, float]:
    """RankGR's RSP objective on the items flagged `trained` (M,): at each level, the backbone's top lambda_l codes
    after the item's true prefix (inside the SID trie when `masks` is given; the true code always among them), scored
    by the rank head against what the predicting position sees, BCE with 1 for the true code. Returns the loss
    (mean over levels), the share of (item, level) where the true code scored highest, and the same share for the
    backbone's own order of the kept codes (what the head has to beat)."""
    if not bool(trained.any()):
        return states.logits.sum() * 0.0, float("nan"), float("nan")
    vocab, hidden = model.vocab, states.hidden
    idx = torch.nonzero(trained, as_tuple=True)[0]
    codes = _item_codes(model, batch)[idx]
    losses, top1, model_top1 = [], [], []
    for level in range(vocab.levels):
        start, size = vocab.level_start(level), vocab.sizes[level]
        allowed = masks.allowed(level, codes[:, :level]).to(hidden.device) if masks is not None else None
        level_logits = states.logits[idx, level, start:start + size].detach()
        kept = keep_candidates(level_logits, allowed, codes[:, level], model.rank.lambdas[level])
        logits = rank_head_logits(model, batch, states, idx, level, kept)
        losses.append(rank_head_bce(logits, kept, codes[:, level]))
        best = torch.gather(kept, 1, logits.detach().argmax(dim=1, keepdim=True)).squeeze(1)
        top1.append((best == codes[:, level]).float().mean())
        model_best = keep_candidates(level_logits, allowed, None, 1)[:, 0]
        model_top1.append((model_best == codes[:, level]).float().mean())
    return torch.stack(losses).mean(), float(torch.stack(top1).mean()), float(torch.stack(model_top1).mean())


def lower_pairs(levels: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(M, M) bool: [k, i] is True when item i is on k's page at a less preferred level."""
    return (group.unsqueeze(1) == group.unsqueeze(0)) & (levels.unsqueeze(0) > levels.unsqueeze(1))


def ldpo_loss(scores: torch.Tensor, levels: torch.Tensor, group: torch.Tensor, beta: float) -> torch.Tensor:
    """RankGR eq. 8. scores (M,): pi of each item; levels (M,): its preference level (0 = most preferred);
    group (M,): its page. Mean over the items that have a lower-level item in their page of
    -log(e^{beta pi(k)} / (e^{beta pi(k)} + sum over the page's lower-level items i of e^{beta pi(i)}));
    0 (with gradient) when no page has two levels."""
    s = beta * scores
    lower = lower_pairs(levels, group)
    active = lower.any(dim=1)
    if not bool(active.any()):
        return scores.sum() * 0.0
    others = torch.logsumexp(s.unsqueeze(0).expand(len(s), -1).masked_fill(~lower, float("-inf")), dim=1)
    terms = torch.logaddexp(s, others) - s  # -log(e^s / (e^s + sum e^s_i))
    return terms[active].mean()


def ntp_loss(token_logp: torch.Tensor, ntp: torch.Tensor) -> torch.Tensor:
    """Next-token NLL per code token over the items flagged `ntp` (M,) (the page's logged items of the SFT target
    groups; never negatives)."""
    if not bool(ntp.any()):
        return token_logp.sum() * 0.0
    return -token_logp[ntp].mean()
