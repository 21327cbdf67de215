"""Collaborative fine-tuning of the text encoder itself (embed.finetune.target=encoder).

The same symmetric InfoNCE on co-engagement pairs as the head (genrec/embed/finetune.py), but the
gradients reach the encoder's weights: each step encodes the two items' texts with gradients on.
After every epoch the whole catalog is re-encoded (through the stage's own encoding path, so image
views and fusion are applied as in the final output) and the epoch with the best validation recall
wins; "no fine-tuning" is a candidate, so a harmful run leaves the encoder as it was.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from genrec.config import FinetuneConfig
from genrec.embed.encoders import TextEncoder
from genrec.embed.finetune import FinetuneResult, info_nce, recall_at_k, split_pairs, steps_per_epoch


def finetune_encoder(encoder: TextEncoder, texts: list[str], base: np.ndarray, pairs: np.ndarray, weights: np.ndarray,
                     cfg: FinetuneConfig, seed: int, embed_catalog: Callable[[TextEncoder], np.ndarray]) -> FinetuneResult:
    """Train `encoder` in place on `pairs` (row indices into `texts`); leave it at the chosen epoch's weights.

    `base` is the catalog embedded with the untouched encoder; `embed_catalog(encoder)` returns the
    (n_items, d) L2-normalised vectors the stage would write with that encoder. Recall is measured on
    these: before, per epoch (validation) and after (held-out pairs).
    """
    train, train_w, held = split_pairs(pairs, weights, cfg.heldout_fraction, cfg.max_pairs, seed)
    train, train_w, valid = split_pairs(train, train_w, cfg.heldout_fraction, len(train), seed + 1)
    before = recall_at_k(base, held)
    best_emb, best_valid = base, recall_at_k(base, valid)
    best_weights = copy.deepcopy(encoder.model.state_dict())
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(encoder.model.parameters(), lr=cfg.encoder_lr)
    rng = np.random.default_rng(seed)
    p = train_w / train_w.sum() if len(train_w) else None
    steps = steps_per_epoch(len(train), cfg)
    losses: list[float] = []
    for epoch in range(cfg.epochs if steps else 0):
        encoder.model.train()  # dropout on, as in SimCSE-style contrastive training
        for _ in tqdm(range(steps), desc=f"fine-tune encoder, epoch {epoch + 1}/{cfg.epochs}", unit="batch"):
            batch = train[rng.choice(len(train), size=min(cfg.batch_size, len(train)), replace=True, p=p)]
            a = encoder.embed([texts[i] for i in batch[:, 0]])
            b = encoder.embed([texts[i] for i in batch[:, 1]])
            loss = info_nce(a, b, batch, cfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
        encoder.model.eval()
        current = embed_catalog(encoder)
        score = recall_at_k(current, valid)
        if score > best_valid:
            best_emb, best_valid, best_weights = current, score, copy.deepcopy(encoder.model.state_dict())
    encoder.model.load_state_dict(best_weights)
    encoder.model.eval()
    return FinetuneResult(best_emb, None, None, before, recall_at_k(best_emb, held), len(train), len(held), losses)
