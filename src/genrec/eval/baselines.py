"""Baselines trained and scored on the same split and requests as GenRec: most-popular and SASRec.

- Most-popular: items ranked by their count of positive interactions (ordered, carted, clicked) in the
  training pages; the same list for every request.
- SASRec (Kang & McAuley, 2018): a causal self-attention encoder over the item-id sequence; the output at
  each position scores the whole catalog (tied item embeddings), trained with cross-entropy over the full
  catalog to predict the next item: along the history, and from its last position the page's positive
  items (one sample per positive item). Ranking = the full catalog by score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from genrec.config import SasrecConfig
from genrec.model.samples import page_items

POSITIVE = ["order", "cart", "click"]


def popularity_ranking(train_pages: pd.DataFrame, top: int) -> np.ndarray:
    """The `top` items with the most positive interactions in the training pages (ties: smaller id first)."""
    items = [i for page in train_pages.itertuples(index=False) for i in page_items(page._asdict(), POSITIVE)]
    if not items:
        raise ValueError("no positive interaction in the training pages: popularity is undefined")
    ids, counts = np.unique(np.asarray(items, dtype=np.int64), return_counts=True)
    order = np.lexsort((ids, -counts))
    return ids[order][:top]


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SasrecConfig, max_len: int):
        super().__init__()
        self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)  # row 0: padding
        self.pos = nn.Embedding(max_len, cfg.hidden)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, 4 * cfg.hidden, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) item rows, left-padded with 0 -> (B, T, n_items + 1) logits (column 0 is padding, masked)."""
        t = seq.shape[1]
        h = self.drop(self.item(seq) + self.pos(torch.arange(t, device=seq.device)))
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=seq.device), 1)
        h = self.norm(self.blocks(h, mask=causal))
        logits = h @ self.item.weight.T
        logits[..., 0] = float("-inf")
        return logits


def _left_pad(rows: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), dtype=np.int64)
    for r, seq in enumerate(rows):
        seq = seq[-length:]
        if seq:
            out[r, length - len(seq):] = seq
    return out


def train_sasrec(histories: list[list[int]], targets: list[int], n_items: int, cfg: SasrecConfig, max_len: int,
                 seed: int) -> SASRec:
    """Train on (history rows, target row) samples; rows are 1-based item rows (0 = padding)."""
    torch.manual_seed(seed)
    model = SASRec(n_items, cfg, max_len)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # Input = history; labels = the history shifted by one, then the target after the last history item.
    seqs = [h[-max_len:] for h in histories]
    inputs = _left_pad(seqs, max_len)
    labels = _left_pad([s[1:] + [t] for s, t in zip(seqs, targets)], max_len)
    rng = np.random.default_rng(seed)
    model.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(inputs))
        for lo in tqdm(range(0, len(order), cfg.batch_size), desc=f"SASRec epoch {epoch + 1}/{cfg.epochs}", unit="batch"):
            idx = order[lo:lo + cfg.batch_size]
            x, y = torch.from_numpy(inputs[idx]), torch.from_numpy(labels[idx])
            logits = model(x)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def sasrec_rank(model: SASRec, histories: list[list[int]], max_len: int, top: int, batch_size: int = 256) -> np.ndarray:
    """(N, top) item rows (1-based), best first, from the last position of each history."""
    out = []
    for lo in range(0, len(histories), batch_size):
        x = torch.from_numpy(_left_pad([h[-max_len:] for h in histories[lo:lo + batch_size]], max_len))
        out.append(torch.topk(model(x)[:, -1], top, dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, top), dtype=np.int64)
