"""The GRPO-SR objective (paper eq. 8) and the log-probabilities it needs.

    L = - mean_i mean_t [ pi(y_i,t) / sg(pi(y_i,t)) ] * A_i  +  alpha * NLL(page's engaged items)  [+ beta * KL]

The ratio equals 1 in value; its gradient is grad log pi, so the first term is the group-relative
policy gradient, averaged over each rollout's tokens and then over the rollouts of all groups.
The regulariser is per item, as a rollout is decoded: each engaged item of the page conditioned on the
prompt alone, its L code tokens' NLL summed, averaged over the items (no separators, no item seeing
another; `engaged_items_nll`). alpha = 0 gives plain GRPO. The optional KL to the frozen SFT model uses the k3 estimator per token
(exp(ref - logp) - (ref - logp) - 1, unbiased and non-negative).
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.model.genrec_model import GenRecModel
from genrec.model.samples import collate, encode_prompt, join_prompt_target
from genrec.model.vocab import SidVocab


def prompt_item_batch(history_codes: list[np.ndarray], item_codes: list[np.ndarray], vocab: SidVocab,
                      token_merger: bool) -> dict:
    """One row per (prompt r, item of item_codes[r]): the prompt then that item's L code tokens, labelled (no
    <sep> or <eos>), so each item is conditioned on the prompt alone. Rows are prompt-major."""
    encoded = []
    for hist, items in zip(history_codes, item_codes):
        p_ids, p_item = encode_prompt(hist, vocab, token_merger)
        for codes in items:  # the codes may be no item (a free rollout): encoded from codes, not item ids
            encoded.append(join_prompt_target(p_ids, p_item, vocab.code_tokens(codes), vocab.levels))
    return collate(encoded, vocab.pad)


def rollout_batch(history_codes: list[np.ndarray], codes: np.ndarray, vocab: SidVocab, token_merger: bool) -> dict:
    """Prompt + rollout SID as training sequences: N * G rows (request-major), labels on the L rollout tokens."""
    return prompt_item_batch(history_codes, list(codes), vocab, token_merger)


def engaged_items_nll(model: GenRecModel, history_codes: list[np.ndarray], engaged_codes: list[np.ndarray]
                      ) -> torch.Tensor:
    """GRPO-SR's regulariser: mean over the pages' engaged items of -sum_l log p(code_l | prompt, earlier codes)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in prompt_item_batch(history_codes, engaged_codes, model.vocab,
                                                             model.token_merger).items()}
    return -token_logprobs(model, batch, model.vocab.levels).sum(dim=1).mean()


def token_logprobs(model: GenRecModel, batch: dict, levels: int) -> torch.Tensor:
    """(M, L) log-probabilities of each row's L labelled tokens under `model` (with gradient; with a copy head,
    the mixture's per-code conditionals, which sum to the item's log-probability)."""
    logp = model.target_logprobs(batch)
    return logp[batch["labels"][:, 1:] != -100].view(len(logp), levels)


def grpo_sr_loss(token_logp: torch.Tensor, advantages: torch.Tensor, nll: torch.Tensor | None, alpha: float,
                 ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss and its terms. token_logp (M, L); advantages (M,); nll: the NLL of the engaged items (or None)."""
    ratio = torch.exp(token_logp - token_logp.detach())
    policy = -(ratio.mean(dim=1) * advantages).mean()
    loss, terms = policy, {"loss_policy": float(policy.detach())}
    if alpha > 0:
        if nll is None:
            raise ValueError("alpha > 0 needs the NLL of the page's engaged items")
        loss = loss + alpha * nll
        terms["loss_nll"] = float(nll.detach())
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs the reference model's log-probabilities")
        d = ref_logp - token_logp
        kl = (torch.exp(d) - d - 1).mean()
        loss = loss + kl_coef * kl
        terms["loss_kl"] = float(kl.detach())
    return loss, terms
