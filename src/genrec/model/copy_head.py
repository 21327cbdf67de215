"""The copy head: a pointer over the prompt's history items, mixed with the generated SID distribution.

Users come back to items they have seen. A small decoder over SID codes learns to re-emit a history item
only slowly (it must match three codes by attention); on the demo month the SFT model hit 0.54 of the
requests whose true item is among the last 10 history items, where "recent history first" hits 0.87
(bench/results/demo_quality.md). The copy head gives the model that behaviour directly, as pointer
networks and RepeatNet do:

    p(item | prompt) = (1 - g) * p_gen(item) + g * sum_j a_j [history item j == item]

- p_gen(item) = prod_l p(code_l | prompt, earlier codes), the backbone's SID distribution;
- a_j: attention of the hidden state that predicts the item's first code (the query) over the history
  items' hidden states (the keys: each item's last code position, or its merged position with the Token
  Merger), plus a learned bias per recency rank (the newest item has rank 0);
- g = sigmoid(w . query + b): how much of the mass is copied.

The mixture is over whole items, so decoding works on SID prefixes: p(prefix) = (1 - g) p_gen(prefix) +
g * (attention on history items whose SID starts with prefix). Beam search ranks prefixes by it, rollouts
sample each code from p(prefix + code) / p(prefix), and teacher-forced log-probabilities are the same
per-code conditionals, so their sum over an item's codes is log p(item). With g = 0 everything reduces
to the plain model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrec.model.vocab import SidVocab

MAX_RECENCY = 64  # recency ranks with their own bias; older items share the last one


@dataclass
class HistorySlots:
    """The prompt's history items, one slot each, oldest first; rows padded to the longest history."""

    pos: torch.Tensor  # (B, H) position of the item's key (its last code, or its merged position)
    codes: torch.Tensor  # (B, H, L) the item's SID codes (code indices, not token ids)
    valid: torch.Tensor  # (B, H) False on padding slots
    recency: torch.Tensor  # (B, H) 0 for the newest item of the row


def history_slots(ids: torch.Tensor, is_item: torch.Tensor, prompt_mask: torch.Tensor, vocab: SidVocab
                  ) -> HistorySlots:
    """Find the history items of encoded prompts: ids (B, T, L), is_item (B, T), prompt_mask (B, T) True on
    prompt positions. Merged items are their is_item positions; w/o TM an item ends at a last-level code."""
    levels = vocab.levels
    level_starts = [vocab.level_start(i) for i in range(levels)]
    tok = ids[..., 0]
    ends_item = (tok >= level_starts[-1]) & (tok < level_starts[-1] + vocab.sizes[-1]) & ~is_item
    flag = prompt_mask & (is_item | ends_item)
    # w/o TM an item's codes are the L tokens ending at its slot: (B, T, L), tokens t-L+1 .. t
    plain_codes = torch.stack([nn.functional.pad(tok, (levels - 1 - i, 0))[:, :tok.shape[1]] for i in range(levels)],
                              dim=-1)
    token_codes = torch.where(is_item.unsqueeze(-1), ids, plain_codes)
    codes = token_codes - torch.tensor(level_starts, device=ids.device)
    n = flag.sum(dim=1)
    width = max(int(n.max().item()), 1)
    order = torch.argsort((~flag).to(torch.int8), dim=1, stable=True)[:, :width]  # slot positions first, in order
    valid = torch.arange(width, device=ids.device).unsqueeze(0) < n.unsqueeze(1)
    pos = torch.where(valid, order, torch.zeros_like(order))
    slot_codes = torch.gather(codes, 1, pos.unsqueeze(-1).expand(-1, -1, levels))
    slot_codes = torch.where(valid.unsqueeze(-1), slot_codes, torch.zeros_like(slot_codes))
    recency = (n.unsqueeze(1) - 1 - torch.arange(width, device=ids.device).unsqueeze(0)).clamp(0, MAX_RECENCY - 1)
    return HistorySlots(pos, slot_codes, valid, recency)


class CopyHead(nn.Module):
    """Query/key projections, the copy gate and the recency bias."""

    def __init__(self, hidden: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.gate = nn.Linear(hidden, 1)
        self.recency = nn.Embedding(MAX_RECENCY, 1)
        with torch.no_grad():
            self.recency.weight.zero_()
            self.gate.bias.fill_(-2.0)  # start mostly generative: copying is learned, not imposed

    def forward(self, query_h: torch.Tensor, slot_h: torch.Tensor, valid: torch.Tensor, recency: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """query_h (M, d), slot_h (M, H, d), valid / recency (M, H) -> log attention (M, H), log g, log (1 - g) (M,).
        A row without history items copies nothing (g = 0)."""
        q, k = self.query(query_h), self.key(slot_h)
        score = (k @ q.unsqueeze(-1)).squeeze(-1) / q.shape[-1] ** 0.5 + self.recency(recency).squeeze(-1)
        log_attn = torch.log_softmax(score.float().masked_fill(~valid, float("-inf")), dim=-1)
        any_slot = valid.any(dim=1)
        log_attn = torch.where(any_slot.unsqueeze(1), log_attn, torch.full_like(log_attn, float("-inf")))
        z = self.gate(query_h).squeeze(-1).float()
        log_g = torch.where(any_slot, nn.functional.logsigmoid(z), torch.full_like(z, float("-inf")))
        log_1m_g = torch.where(any_slot, nn.functional.logsigmoid(-z), torch.zeros_like(z))
        return log_attn, log_g, log_1m_g


def safe_log(mass: torch.Tensor) -> torch.Tensor:
    """log(mass), -inf where mass is 0, without NaN gradients there."""
    return torch.where(mass > 0, torch.log(mass.clamp_min(1e-38)), torch.full_like(mass, float("-inf")))


def copy_prefix_logmass(log_attn: torch.Tensor, slot_codes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Teacher-forced copy mass: log_attn (M, H), slot_codes (M, H, L), codes (M, L) -> (M, L), entry l = log of
    the attention on history items whose first l + 1 codes equal codes[:, :l + 1]."""
    match = torch.cumprod((slot_codes == codes.unsqueeze(1)).to(log_attn.dtype), dim=-1)  # (M, H, L)
    return safe_log((log_attn.exp().unsqueeze(-1) * match).sum(dim=1))


def copy_level_logmass(log_attn: torch.Tensor, slot_codes: torch.Tensor, prefixes: torch.Tensor, size: int
                       ) -> torch.Tensor:
    """Decoding copy mass: log_attn (N, H), slot_codes (N, H, L), prefixes (N, W, l) -> (N, W, size): the log
    attention on history items that continue each prefix with each code of level l."""
    level = prefixes.shape[-1]
    n, width, slots = prefixes.shape[0], prefixes.shape[1], slot_codes.shape[1]
    match = (slot_codes[:, None, :, :level] == prefixes[:, :, None, :]).all(dim=-1)  # (N, W, H); all True at l = 0
    weight = log_attn.exp().unsqueeze(1) * match
    mass = torch.zeros(n, width, size, dtype=weight.dtype, device=weight.device)
    mass.scatter_add_(2, slot_codes[:, None, :, level].expand(n, width, slots), weight)
    return safe_log(mass)


def mixture_logprob(gen_logp: torch.Tensor, copy_logmass: torch.Tensor, log_g: torch.Tensor, log_1m_g: torch.Tensor
                    ) -> torch.Tensor:
    """log((1 - g) p_gen + g p_copy) from log p_gen and log p_copy of the same prefixes; log_g / log_1m_g
    broadcast from the left (one per request)."""
    while log_g.dim() < gen_logp.dim():
        log_g, log_1m_g = log_g.unsqueeze(-1), log_1m_g.unsqueeze(-1)
    return torch.logaddexp(log_1m_g + gen_logp, log_g + copy_logmass)


def mixture_token_logprobs(gen_token_logp: torch.Tensor, copy_logmass: torch.Tensor, log_g: torch.Tensor,
                           log_1m_g: torch.Tensor) -> torch.Tensor:
    """Per-code conditionals of the mixture: gen_token_logp (M, L) the backbone's log p(code_l | prefix),
    copy_logmass (M, L) from copy_prefix_logmass -> (M, L) log p_mix(code_l | prefix); they sum to log p_mix(item)."""
    prefix = mixture_logprob(gen_token_logp.cumsum(dim=-1), copy_logmass, log_g, log_1m_g)  # (M, L)
    before = torch.nn.functional.pad(prefix[:, :-1], (1, 0))  # log p_mix(empty prefix) = 0
    return prefix - before
