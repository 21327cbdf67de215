"""Point-wise beam search over SID codes: B items (code tuples) per request, with scores, batched, KV-cached.

One forward pass over the (left-padded) prompts fills the KV cache; then each of the L levels is one step:
log-softmax over the whole vocabulary, mask, add to the beam score, keep the best B of the B x K candidates.
The prompt's cache is not repeated per beam: a request's B beam tokens of a level are appended to its one
cache row as B positions side by side, and a 4D attention mask lets each see the prompt, its own ancestors
and itself (tree attention). Repeating and reordering a B-times cache was ~60% of decoding time on CPU.
Scores are sums of log-probabilities (the same as transformers' beam search with a prefix_allowed_tokens_fn,
which the benchmark compares).

Masks:
- constrained: only codes that continue a prefix of some item's SID (genrec.sid.trie.SidTrie, as dense
  per-prefix masks over the prefixes that exist), so every output is a real item;
- unconstrained: any code of the right level; the output may be no item (counted as a hallucination).
Ties are broken by index (torch.topk on CPU and GPU is deterministic for equal inputs).

With a copy head the beams are ranked by the mixture's prefix probability, log((1 - g) p_gen(prefix) +
g p_copy(prefix)) (genrec.model.copy_head), and an item's score is log p_mix(item).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genrec.errors import ConfigError, InputDataError
from genrec.model.copy_head import copy_level_logmass, mixture_logprob
from genrec.model.genrec_model import GenRecModel, catalog_buckets, item_bucket
from genrec.model.item_softmax import item_softmax_logprobs, rerank_with_item_softmax
from genrec.model.samples import encode_prompt
from genrec.model.vocab import SidMap
from genrec.sid.trie import SidTrie


@dataclass
class BeamOutput:
    codes: np.ndarray  # (N, B, L) generated SID codes
    scores: np.ndarray  # (N, B) summed log-probabilities, best first; -inf where fewer than B items exist
    items: np.ndarray  # (N, B) item id, -1 where the codes are no item (or the beam is empty)


class PrefixMasks:
    """The SID trie's allowed-next-code sets as tensors: per level, the sorted prefix keys and a boolean
    (n_prefixes, K_level) mask, so one searchsorted per step serves every beam of a batch."""

    def __init__(self, trie: SidTrie):
        self.trie = trie
        self.levels = [tuple(torch.from_numpy(a) for a in trie.level_mask(level)) for level in range(trie.levels)]

    def allowed(self, level: int, prefixes: torch.Tensor) -> torch.Tensor:
        """(M, level) code prefixes -> (M, K_level) allowed mask (no code allowed after a prefix of no item)."""
        keys, mask = self.levels[level]
        key = torch.from_numpy(self.trie.prefix_keys(prefixes.cpu().numpy()))
        pos = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
        found = keys[pos] == key
        return mask[pos] & found.unsqueeze(1)


def left_pad_prompts(histories: list[np.ndarray], model: GenRecModel, device) -> tuple[torch.Tensor, ...]:
    """Encode and left-pad prompts: ids (N, P, L), is_item (N, P), attention_mask (N, P), position_ids (N, P)."""
    enc = [encode_prompt(h, model.vocab, model.token_merger) for h in histories]
    length = max(len(e[0]) for e in enc)
    levels = model.vocab.levels
    ids = np.full((len(enc), length, levels), model.vocab.pad, dtype=np.int64)
    is_item = np.zeros((len(enc), length), bool)
    mask = np.zeros((len(enc), length), dtype=np.int64)
    for r, (i, f) in enumerate(enc):
        ids[r, length - len(i):], is_item[r, length - len(i):], mask[r, length - len(i):] = i, f, 1
    mask_t = torch.from_numpy(mask)
    positions = (mask_t.cumsum(1) - 1).clamp(min=0)
    return (torch.from_numpy(ids).to(device), torch.from_numpy(is_item).to(device), mask_t.to(device),
            positions.to(device))


def item_rerank(model: GenRecModel, sid_map: SidMap, prompt_state: torch.Tensor, codes: torch.Tensor,
                scores: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Final beams ((N, B, L) codes, (N, B) scores) re-ranked by the item softmax of the prompt-end state."""
    if model.item_table is None:
        raise ConfigError("re-ranking by the item softmax (eval.item_rerank_weight) needs a model with per-item rows "
                          "trained by it (model.item_embedding_buckets, sft.item_softmax_weight)")
    vocab, rows = model.vocab, model.item_table.num_embeddings
    candidates = catalog_buckets(sid_map.codes, vocab, rows).to(codes.device)
    starts = torch.tensor([vocab.level_start(i) for i in range(vocab.levels)], device=codes.device)
    item_lp = item_softmax_logprobs(prompt_state, item_bucket(codes + starts, rows), model.item_table(candidates),
                                    candidates)
    return rerank_with_item_softmax(scores, item_lp, weight)


def tree_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, 1, Q, K) bool (True: may attend) -> the additive float mask the sdpa and eager backbones both take."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)


def rank_head_select(model: GenRecModel, cand: torch.Tensor, level: int, lam: int, beam: int, keys_h: torch.Tensor,
                     key_mask: torch.Tensor, state_h: torch.Tensor, rank_sums: torch.Tensor, level_logp: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RankGR's two-stage step: cand (N, W, K) the initial assessment's log-probabilities of each beam's prefix
    extended by each next code (-inf where not allowed); keep the top `lam` per beam, score them with the rank head
    (keys_h (N * W, S, d) and key_mask (N * W, S): what each beam has seen; state_h (N * W, d): its predicting
    state; level_logp (N, W, K): the backbone's log p of each next code, the head's input with model_feature), and
    keep the best `beam` by rank_sums (N, W) + log s + model_weight * cand (genrec.model.rank_head). Returns those
    scores (N, k), the new sums of log s (N, k) and the choices as indices into W * K."""
    n, width, size = cand.shape
    lam = min(lam, size)
    kept_score, kept = torch.topk(cand, lam, dim=2)  # (N, W, lam)
    start = model.vocab.level_start(level)
    code_emb = model.lm.get_input_embeddings()(kept.reshape(n * width, lam) + start)
    code_logp = torch.gather(level_logp, 2, kept).reshape(n * width, lam) if model.rank.model_feature else None
    log_s = torch.nn.functional.logsigmoid(model.rank(code_emb, keys_h, key_mask, state_h, code_logp).float())
    log_s = log_s.view(n, width, lam)
    sums = rank_sums.unsqueeze(-1) + log_s
    refined = sums if model.rank.model_weight == 0 else sums + model.rank.model_weight * kept_score
    refined = refined.masked_fill(~torch.isfinite(kept_score), float("-inf"))
    k = min(beam, width * lam)
    top, flat = torch.topk(refined.reshape(n, width * lam), k, dim=1)
    parent = flat // lam
    code = torch.gather(kept.reshape(n, width * lam), 1, flat)
    return top, torch.gather(sums.reshape(n, width * lam), 1, flat), parent * size + code


@torch.no_grad()
def beam_search(model: GenRecModel, history_codes: list[np.ndarray], sid_map: SidMap, beam: int, constrained: bool,
                masks: PrefixMasks | None = None, use_rank_head: bool = True, item_weight: float = 0.0) -> BeamOutput:
    """Top-`beam` items for each request (one history's (n, L) codes each), best first. A model with a rank head
    decodes in two stages (`rank_head_select`) and scores items by it (and by its model_weight times log p(item)),
    unless `use_rank_head` is False. `item_weight` > 0 re-ranks the final beams by adding that times their item
    softmax log-probability (needs per-item rows; `rerank_with_item_softmax`)."""
    empty = [i for i, h in enumerate(history_codes) if len(h) == 0]
    if empty:
        raise InputDataError(f"{len(empty)} requests have an empty history (first: request {empty[0]}); "
                             "a prompt needs at least one item (rank them by popularity instead)")
    model.eval()
    device = next(model.parameters()).device
    vocab, levels, n = model.vocab, model.vocab.levels, len(history_codes)
    if constrained and masks is None:
        masks = PrefixMasks(sid_map.trie())
    ids, is_item, attn, pos = left_pad_prompts(history_codes, model, device)
    out = model(ids, is_item, attn, position_ids=pos, use_cache=True, logits_to_keep=1)
    copy = model.copy_state(out, ids, is_item, attn)
    cache, logits = out.past_key_values, out.logits[:, -1]
    next_pos = pos[:, -1:] + 1  # (N, 1)
    rank = use_rank_head and model.rank is not None
    prompt_h, prefix_h = out.hidden, out.hidden[:, :0].unsqueeze(1)  # (N, P, d), (N, width, decoded, d)
    scores = torch.zeros(n, 1, device=device)  # one live beam per request before the first step
    gen_scores = scores  # the backbone's own log p(prefix); equal to scores without a copy head
    rank_sums = scores  # with a rank head: the sum of its log s over the levels so far
    codes = torch.zeros(n, 1, 0, dtype=torch.int64, device=device)
    seen = torch.zeros(n, 1, 0, dtype=torch.bool, device=device)  # (N, width, decoded columns): a beam's ancestors
    dtype = model.lm.get_input_embeddings().weight.dtype
    for level in range(levels):
        start, size = vocab.level_start(level), vocab.sizes[level]
        logp = torch.log_softmax(logits.float(), dim=-1)[:, start:start + size]  # (N * width, K)
        width = scores.shape[1]
        if constrained:
            allowed = masks.allowed(level, codes.reshape(n * width, level)).to(device)
            logp = logp.masked_fill(~allowed, float("-inf"))
        gen_cand = (gen_scores.reshape(n * width, 1) + logp).reshape(n, width * size)
        cand = gen_cand if copy is None else mixture_logprob(
            gen_cand.reshape(n, width, size), copy_level_logmass(copy.log_attn, copy.slot_codes, codes, size),
            copy.log_g, copy.log_1m_g).reshape(n, width * size).masked_fill(~torch.isfinite(gen_cand), float("-inf"))
        if rank:  # keys: the prompt and the beam's decoded prefix; state: the prompt's end or the last code
            keys = torch.cat([prompt_h.unsqueeze(1).expand(-1, width, -1, -1), prefix_h], dim=2).flatten(0, 1)
            key_mask = torch.cat([attn.bool().unsqueeze(1).expand(-1, width, -1),
                                  torch.ones(n, width, level, dtype=torch.bool, device=device)], dim=2).flatten(0, 1)
            state = prompt_h[:, -1].repeat_interleave(width, dim=0) if level == 0 else prefix_h[:, :, -1].flatten(0, 1)
            top, rank_sums, idx = rank_head_select(model, cand.view(n, width, size), level, model.rank.lambdas[level],
                                                   beam, keys, key_mask, state, rank_sums,
                                                   logp.view(n, width, size))
        else:
            top, idx = torch.topk(cand, min(beam, width * size), dim=1)
        k = idx.shape[1]
        parent, code = idx // size, idx % size
        codes = torch.cat([torch.gather(codes, 1, parent.unsqueeze(-1).expand(-1, -1, level)), code.unsqueeze(-1)], dim=2)
        scores, gen_scores = top, torch.gather(gen_cand, 1, idx)
        if level == levels - 1:
            break
        # The new beams' tokens join each request's cache row side by side; a beam sees its parent's ancestors
        # (the columns decoded so far that its parent saw) and itself.
        seen = torch.cat([torch.gather(seen, 1, parent.unsqueeze(-1).expand(-1, -1, seen.shape[2])),
                          torch.eye(k, dtype=torch.bool, device=device).expand(n, -1, -1)], dim=2)
        visible = torch.cat([attn.bool().unsqueeze(1).expand(-1, k, -1), seen], dim=2).unsqueeze(1)
        token = (code + start).unsqueeze(-1).expand(-1, -1, levels)  # (N, k, L)
        out = model(token, torch.zeros(n, k, dtype=torch.bool, device=device), tree_mask(visible, dtype),
                    position_ids=(next_pos + level).expand(-1, k), past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits.reshape(n * k, -1)
        if rank:
            prefix_h = torch.cat([torch.gather(prefix_h, 1, parent[:, :, None, None].expand(-1, -1, *prefix_h.shape[2:])),
                                  out.hidden.unsqueeze(2)], dim=2)
    if item_weight > 0:
        scores, order = item_rerank(model, sid_map, prompt_h[:, -1], codes, scores, item_weight)
        codes = torch.gather(codes, 1, order.unsqueeze(-1).expand(-1, -1, levels))
    codes_np, scores_np = codes.cpu().numpy(), scores.cpu().numpy()
    if codes_np.shape[1] < beam:  # fewer candidates than beams (tiny catalogs): pad with empty beams
        pad = beam - codes_np.shape[1]
        codes_np = np.concatenate([codes_np, np.zeros((n, pad, levels), np.int64)], axis=1)
        scores_np = np.concatenate([scores_np, np.full((n, pad), -np.inf, np.float32)], axis=1)
    items = sid_map.items_of(codes_np.reshape(-1, levels)).reshape(n, beam)
    items[~np.isfinite(scores_np)] = -1
    return BeamOutput(codes_np, scores_np, items)

