"""Rollouts for GRPO: G items per prompt sampled from the policy, one SID (L codes) each, as served.

The prompt is encoded once; its KV cache is repeated G times; each level samples one code per rollout
from the policy's distribution over that level's codes (temperature-scaled), optionally restricted to
the SID trie. Unconstrained rollouts may be no item (items = -1). Sampling uses an explicit
torch.Generator, so a step's rollouts depend only on its seed (a resumed run replays them).
With a copy head each code is sampled from the mixture's conditional p_mix(prefix + code) / p_mix(prefix)
(genrec.model.copy_head), so a rollout is an item drawn from the distribution that beam search ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.model.beam_search import PrefixMasks, left_pad_prompts
from genrec.model.copy_head import copy_level_logmass, mixture_logprob
from genrec.model.genrec_model import GenRecModel
from genrec.model.vocab import SidMap


@torch.no_grad()
def sample_rollouts(model: GenRecModel, history_codes: list[np.ndarray], sid_map: SidMap, group: int,
                    temperature: float, constrained: bool, masks: PrefixMasks | None,
                    generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(codes (N, G, L), items (N, G), -1 where the codes are no item)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vocab, levels, n = model.vocab, model.vocab.levels, len(history_codes)
    ids, is_item, attn, pos = left_pad_prompts(history_codes, model, device)
    out = model(ids, is_item, attn, position_ids=pos, use_cache=True, logits_to_keep=1)
    copy = model.copy_state(out, ids, is_item, attn)
    rows = torch.arange(n, device=device).repeat_interleave(group)
    gen_prefix = torch.zeros(n * group, 1, device=device)  # the backbone's log p(prefix) of each rollout
    cache = out.past_key_values
    cache.reorder_cache(rows)
    logits, attn, step_pos = out.logits[rows, -1], attn[rows], pos[rows, -1:] + 1
    codes = torch.zeros(n * group, 0, dtype=torch.int64, device=device)
    for level in range(levels):
        start, size = vocab.level_start(level), vocab.sizes[level]
        if copy is None:
            level_logits = logits.float()[:, start:start + size] / temperature
        else:  # the mixture's log p(prefix + code); the prefix's own probability is a constant per row
            gen = gen_prefix + torch.log_softmax(logits.float(), dim=-1)[:, start:start + size]
            mixed = mixture_logprob(gen.view(n, group, size), copy_level_logmass(
                copy.log_attn, copy.slot_codes, codes.view(n, group, level), size), copy.log_g, copy.log_1m_g)
            level_logits = mixed.view(n * group, size) / temperature
        if constrained:
            allowed = masks.allowed(level, codes).to(device)
            level_logits = level_logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(level_logits, dim=-1)
        code = torch.multinomial(probs, 1, generator=generator)  # (M, 1)
        codes = torch.cat([codes, code], dim=1)
        if copy is not None:
            gen_prefix = torch.gather(gen, 1, code)
        if level == levels - 1:
            break
        attn = torch.cat([attn, torch.ones(n * group, 1, dtype=attn.dtype, device=device)], dim=1)
        token = (code + start).unsqueeze(-1).expand(-1, -1, levels)
        out = model(token, torch.zeros(n * group, 1, dtype=torch.bool, device=device), attn, position_ids=step_pos,
                    past_key_values=cache, use_cache=True)
        cache, logits, step_pos = out.past_key_values, out.logits[:, -1], step_pos + 1
    model.train(was_training)
    codes_np = codes.cpu().numpy().reshape(n, group, levels)
    return codes_np, sid_map.items_of(codes_np.reshape(-1, levels)).reshape(n, group)
