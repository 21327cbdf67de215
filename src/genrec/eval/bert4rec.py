"""BERT4Rec baseline (Sun et al., 2019), beside SASRec: the same users' sequences, windows and requests.

A bidirectional self-attention encoder over the item-id sequence, trained by the cloze task: in each
training sequence a share of the items (eval.bert4rec.mask_prob, at least one) is replaced by a [mask]
token and predicted over the full catalog with cross-entropy (tied item embeddings). To rank, the history
is followed by one [mask] and the whole catalog is scored at that position.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from genrec.config import Bert4recConfig
from genrec.eval.baselines import init_embeddings, left_pad, sasrec_rank


class BERT4Rec(nn.Module):
    """Item rows 1..n_items; row 0 pads, row n_items + 1 is [mask]."""

    def __init__(self, n_items: int, cfg: Bert4recConfig, max_len: int):
        super().__init__()
        self.n_items, self.mask_row = n_items, n_items + 1
        self.item = nn.Embedding(n_items + 2, cfg.hidden, padding_idx=0)
        self.pos = nn.Embedding(max_len, cfg.hidden)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, 4 * cfg.hidden, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        init_embeddings(self.item, self.pos)

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) item rows, left-padded with 0 -> (B, T, hidden); every position sees every non-padding one."""
        t = seq.shape[1]
        h = self.drop(self.item(seq) + self.pos(torch.arange(t, device=seq.device)))
        return self.norm(self.blocks(h, src_key_padding_mask=seq == 0))

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., n_items + 1) logits over the catalog (column 0, padding, masked; no [mask])."""
        logits = h @ self.item.weight[: self.n_items + 1].T
        logits[..., 0] = float("-inf")
        return logits


def cloze_batch(items: np.ndarray, mask_prob: float, mask_row: int, rng: np.random.Generator):
    """(inputs with [mask] rows, boolean mask of the predicted positions) for left-padded item rows."""
    real = items > 0
    masked = (rng.random(items.shape) < mask_prob) & real
    masked[~masked.any(axis=1), -1] = True  # left padding: the last position is always an item
    return np.where(masked, mask_row, items), masked


def train_bert4rec(sequences: list[list[int]], n_items: int, cfg: Bert4recConfig, max_len: int, seed: int,
                   on_epoch: Callable[[int, BERT4Rec], bool | None] | None = None) -> BERT4Rec:
    """Train the cloze task on windows of max_len items cut from the end of each sequence (1-based rows).
    On the GPU when there is one. `on_epoch(epoch, model)`, if given, runs after each epoch (in train mode);
    training stops early when it returns True."""
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = BERT4Rec(n_items, cfg, max_len).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    items = left_pad([seq[max(0, end - max_len):end] for seq in sequences for end in range(len(seq), 1, -max_len)],
                      max_len)
    rng = np.random.default_rng(seed)
    model.train()
    for epoch in tqdm(range(cfg.epochs), desc=f"BERT4Rec ({len(items)} sequences)", unit="epoch"):
        order = rng.permutation(len(items))
        for lo in range(0, len(order), cfg.batch_size):
            target = items[order[lo:lo + cfg.batch_size]]
            inputs, masked = cloze_batch(target, cfg.mask_prob, model.mask_row, rng)
            x, keep = torch.from_numpy(inputs).to(device), torch.from_numpy(masked).to(device)
            loss = nn.functional.cross_entropy(model.scores(model.hidden(x)[keep]),
                                               torch.from_numpy(target).to(device)[keep])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if on_epoch is not None and on_epoch(epoch + 1, model):
            break
    return model.eval()


def bert4rec_rank(model: BERT4Rec, histories: list[list[int]], max_len: int, top: int,
                  batch_size: int = 256, with_scores: bool = False):
    """(N, top) item rows (1-based), best first: the catalog scored at a [mask] after each history (and the
    scores when `with_scores`)."""
    with_mask = [h[-(max_len - 1):] + [model.mask_row] for h in histories]
    return sasrec_rank(model, with_mask, max_len, top, batch_size, with_scores)
