"""The registered model: an MLflow pyfunc that maps a user's history (item ids, oldest first) to the top-K items.

Artifacts inside the registered model: the GenRec model folder (safetensors + JSON), the SID table
(sid_table.parquet + codebooks.npz) and serving.json (top_k, beam_width, max_history, item_rerank_weight).
predict() takes a DataFrame with a `history` column of item-id lists and returns `items` and `scores` (summed
log-probabilities of trie-constrained beam search, best first; plus the item softmax's term when
item_rerank_weight > 0). An optional params {"k": n} asks for another K (<= beam_width).
An item the SID table does not know, or an empty history, raises an error naming it.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd


class GenRecRecommender(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from genrec.model.beam_search import PrefixMasks
        from genrec.model.genrec_model import GenRecModel
        from genrec.model.vocab import SidMap

        self.model = GenRecModel.load(context.artifacts["model"])
        self.sid_map = SidMap.load(context.artifacts["sids"])
        self.masks = PrefixMasks(self.sid_map.trie())
        with open(context.artifacts["serving"]) as f:
            self.serving = json.load(f)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from genrec.errors import InputDataError
        from genrec.model.beam_search import beam_search

        if "history" not in model_input.columns:
            raise InputDataError(f"the input needs a 'history' column of item-id lists (got {list(model_input.columns)})")
        k = int((params or {}).get("k") or self.serving["top_k"])
        beam = max(self.serving["beam_width"], k)
        max_history = self.serving["max_history"]
        histories = [[int(i) for i in h][-max_history:] for h in model_input["history"]]
        codes = [self.sid_map.item_codes(h, f"input row {r}") for r, h in enumerate(histories)]
        # the decoding evaluate scored: a registered model from before the option has no weight (0: off)
        out = beam_search(self.model, codes, self.sid_map, beam, True, self.masks,
                          item_weight=self.serving.get("item_rerank_weight", 0.0))
        return pd.DataFrame({"items": [row[:k].tolist() for row in out.items],
                             "scores": [row[:k].astype(np.float64).tolist() for row in out.scores]})
