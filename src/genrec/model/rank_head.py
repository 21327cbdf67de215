"""The rank head: RankGR's refined scoring phase (RSP), a light scorer of candidate codes.

At SID level l the model's own distribution (the initial assessment) keeps its top lambda_l codes; the rank
head then scores each kept code c against what the model has seen so far:

    q    = W_q e(c)                                  e(c): the code's input embedding
    ctx  = softmax(q K^T / sqrt(d)) V,  K, V = W_k H, W_v H   H: the hidden states the position may see
                                                              (history, and the item's decoded prefix)
    s(c) = sigmoid(MLP([ctx, q * ctx, h]))           h: the hidden state that predicts level l
         [ + a * log p(c | prefix) ]                 with model_feature: the model's own log-probability of the
                                                     code, a learned gain a (starts at 1, with the MLP's last
                                                     layer at 0, so the head starts as the model's own order and
                                                     learns a correction to it)

Trained with binary cross-entropy (1 for the true code, 0 for the other kept codes) beside LDPO; in decoding,
each level keeps lambda_l codes per beam, the rank head rescores them, and the best B by

    sum over the levels so far of log s  +  model_weight * log p(prefix)

continue (genrec.model.beam_search); an item's score is that sum. model_weight 0 is RankGR's rule (the rank head
alone orders the beams); a positive weight keeps the initial assessment's own log-probability in the score, which
a young head needs (bench/results/rankgr_movielens.md, rankgr_simulator.md).
"""

from __future__ import annotations

import torch
from torch import nn


class RankHead(nn.Module):
    """Target attention of candidate codes over hidden states, then an MLP: one relevance logit per candidate."""

    def __init__(self, hidden: int, lambdas: tuple[int, ...], model_weight: float = 0.0, model_feature: bool = False):
        super().__init__()
        self.lambdas = tuple(int(x) for x in lambdas)
        self.model_weight = float(model_weight)  # decoding only: see the module docstring
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.gain = None
        if model_feature:
            self.gain = nn.Parameter(torch.ones(1))  # 1-d: DeepSpeed's parameter broadcast cannot view a 0-d one
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    @property
    def model_feature(self) -> bool:
        return self.gain is not None

    def forward(self, code_emb: torch.Tensor, keys_h: torch.Tensor, key_mask: torch.Tensor, state_h: torch.Tensor,
                code_logp: torch.Tensor | None = None) -> torch.Tensor:
        """code_emb (R, C, d) candidate embeddings, keys_h (R, T, d) hidden states, key_mask (R, T) True where
        visible, state_h (R, d) the predicting state, code_logp (R, C) the model's log p of each candidate given
        the prefix (needed with model_feature) -> (R, C) relevance logits."""
        if self.model_feature and code_logp is None:
            raise ValueError("this rank head takes the model's log-probability of each candidate (model_feature)")
        q = self.query(code_emb)
        k, v = self.key(keys_h), self.value(keys_h)
        score = (q @ k.transpose(1, 2)) / q.shape[-1] ** 0.5  # (R, C, T)
        attn = torch.softmax(score.float().masked_fill(~key_mask.unsqueeze(1), float("-inf")), dim=-1).to(v.dtype)
        ctx = attn @ v
        x = torch.cat([ctx, q * ctx, state_h.unsqueeze(1).expand_as(ctx)], dim=-1)
        logit = self.mlp(x).squeeze(-1)
        return logit if self.gain is None else logit + self.gain * code_logp.to(logit.dtype)


def keep_candidates(level_logits: torch.Tensor, allowed: torch.Tensor | None, true_code: torch.Tensor | None,
                    lam: int) -> torch.Tensor:
    """The initial assessment's top-`lam` codes per row: level_logits (R, K) over the level's codes, allowed (R, K)
    (the SID trie; None: all), true_code (R,) forced in (training: it replaces the last kept code when the model
    did not keep it) -> (R, lam) code indices, best first. Rows with fewer allowed codes repeat their last."""
    logits = level_logits if allowed is None else level_logits.masked_fill(~allowed, float("-inf"))
    kept = torch.topk(logits, min(lam, logits.shape[1]), dim=1).indices
    if allowed is not None:  # a row with fewer allowed codes than lam: fill with its best code (scored twice)
        ok = torch.gather(allowed, 1, kept)
        kept = torch.where(ok, kept, kept[:, :1])
    if true_code is not None:
        missing = ~(kept == true_code.unsqueeze(1)).any(dim=1)
        kept[:, -1] = torch.where(missing, true_code, kept[:, -1])
    return kept


def rank_head_bce(logits: torch.Tensor, candidates: torch.Tensor, true_code: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the rank head's logits (R, C) for candidates (R, C): 1 for the true code (R,), 0 for
    the others; mean over rows and candidates."""
    target = (candidates == true_code.unsqueeze(1)).to(logits.dtype)
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float())
