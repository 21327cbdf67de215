"""An item-level softmax beside the SID loss: the per-item rows (model.item_embedding_buckets) also learn as targets.

The rows are input-side memory: a row moves only when its item is in a history. SASRec ties its item embeddings
to its output layer, so an item's vector also learns each time the item is bought. Here the same tie is an
auxiliary loss: the state that predicts a target item's first code scores every catalog item by the dot product
with its row, and the cross-entropy of the true item is added to the SID loss (sft.item_softmax_weight). Items
are still generated code by code; decoding may re-rank the final beams by the same softmax
(eval.item_rerank_weight). It was aimed at rare items, on which GenRec trails SASRec on Amazon Beauty; measured
there, the gain came on frequently bought items (bench/results/ablations_amazon_beauty.md).

The candidates' rows come in as `item_table(candidates)`: a call of the embedding module, which DeepSpeed ZeRO-3's
gather hooks cover (tests/test_train.py trains it under ZeRO-3 with a table above the persistence threshold).
"""

from __future__ import annotations

import torch

from genrec.model.vocab import SidVocab


def target_item_spans(labels: torch.Tensor, vocab: SidVocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted labels (B, T-1) -> (rows (M,), span (M, L)) of every target item: labels[rows, span] are its code
    tokens, and the hidden state at (rows, span[:, 0]) is the one that predicts its first code. The copy head's
    mixture and the item softmax both find target items this way."""
    k0 = vocab.level_start(0)
    rows, starts = torch.nonzero((labels >= k0) & (labels < k0 + vocab.sizes[0]), as_tuple=True)
    return rows, starts.unsqueeze(1) + torch.arange(vocab.levels, device=labels.device)


def item_softmax_nll(query: torch.Tensor, target_buckets: torch.Tensor, candidate_rows: torch.Tensor,
                     candidates: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the true items over the catalog: (M, d) query states, (M,) their items' rows, (C,) the
    sorted candidate rows and (C, d) their vectors. Logits are dot products with the rows."""
    logits = query @ candidate_rows.T  # (M, C)
    target = torch.searchsorted(candidates, target_buckets)
    if not bool((candidates[target.clamp(max=len(candidates) - 1)] == target_buckets).all()):
        raise ValueError("a target item's row is not among the catalog's candidate rows (built from another SID map?)")
    return torch.nn.functional.cross_entropy(logits.float(), target)


def item_softmax_logprobs(query: torch.Tensor, item_buckets: torch.Tensor, candidate_rows: torch.Tensor,
                          candidates: torch.Tensor) -> torch.Tensor:
    """(N, d) prompt-end states, (N, B) the rows of N requests' B candidate items -> (N, B) each item's log-probability
    under the item softmax over the catalog's rows (the distribution item_softmax_nll trains; candidates and
    candidate_rows as there); -inf for a row no catalog item uses."""
    logsm = torch.log_softmax((query @ candidate_rows.T).float(), dim=-1)  # (N, C)
    index = torch.searchsorted(candidates, item_buckets).clamp(max=len(candidates) - 1)
    known = candidates[index] == item_buckets  # False for a SID no catalog item has (free decoding)
    return torch.gather(logsm, 1, index).masked_fill(~known, float("-inf"))


def rerank_with_item_softmax(scores: torch.Tensor, item_logprobs: torch.Tensor, weight: float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoding rule of `eval.item_rerank_weight`: each beam's score becomes its SID log-probability plus `weight`
    times its item softmax log-probability; returns the new scores sorted best first and the order ((N, B) indices
    into the beams). Beams scored -inf (no item) stay last."""
    combined = scores + weight * item_logprobs.masked_fill(~torch.isfinite(scores), 0.0)
    new, order = torch.sort(combined, dim=1, descending=True, stable=True)
    return new, order
