"""Collaborative item vectors from the users' training sequences, fused with the content vectors before RQ-KMeans.

Text alone says little about an item when many items share one text (Amazon Beauty has brand and category
only), and the co-engagement fine-tuning (finetune.py) sees pairs, not order. A SASRec (genrec.eval.baselines)
trained to predict the next item over the training pages learns one vector per item whose neighbours are the
items that follow the same histories. Fusing it with the content vector before RQ-KMeans gives semantic IDs
whose shared prefixes mean "predicted in the same contexts" as well as "described alike" (the motivation of
OneRec's and LETTER's collaborative tokenisers). Only the training split is read: the validation and test
items never shape the IDs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from genrec.config import SasrecConfig
from genrec.errors import InputDataError
from genrec.eval.baselines import train_sasrec, user_sequences


def sasrec_item_vectors(train_pages: pd.DataFrame | Iterable[pd.DataFrame], item_ids: np.ndarray, cfg: SasrecConfig,
                        epochs: int, max_len: int, seed: int) -> np.ndarray:
    """(n_items, cfg.hidden): the item embeddings of a SASRec trained for `epochs` on the users' training
    sequences (row i = item_ids[i]). Items that never occur keep their small random initial vectors."""
    row_of = {int(i): r + 1 for r, i in enumerate(item_ids)}  # 1-based rows; 0 pads
    sequences = user_sequences(train_pages, row_of)
    if not sequences:
        raise InputDataError("no user has two positive interactions in the training pages: collaborative item "
                             "vectors cannot be learned (set embed.collaborative_weight: 0)")
    model = train_sasrec(sequences, len(item_ids), cfg.model_copy(update={"epochs": epochs}), max_len, seed)
    return model.item.weight[1:].detach().cpu().numpy().astype(np.float32)


def fuse_collaborative(content: np.ndarray, collaborative: np.ndarray, weight: float) -> np.ndarray:
    """Concatenate the L2-normalised content and collaborative vectors scaled by sqrt(1 - weight) and
    sqrt(weight): the result has unit norm and a dot product that is the weighted sum of the two cosines."""
    if content.shape[0] != collaborative.shape[0]:
        raise ValueError(f"{content.shape[0]} content vectors but {collaborative.shape[0]} collaborative ones")

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return np.concatenate([np.sqrt(1 - weight) * unit(content), np.sqrt(weight) * unit(collaborative)],
                          axis=1).astype(np.float32)
