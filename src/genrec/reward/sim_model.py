"""A search-based user interest model (SIM, Pi et al., CIKM 2020) as the preference reward r_pref in [0, 1].

Given a user's long history and a candidate item:
1. general search unit (GSU): pick the top_k history items relevant to the candidate, either
   hard (items that share the candidate's first SID code, most recent first) or soft (highest
   cosine similarity of the model's own item vectors, not differentiated through the choice);
2. exact search unit (ESU): multi-head target attention of the candidate over the picked items
   (plus a learned "nothing relevant" slot, so a user with no relevant item still gets an answer);
3. the short-term interest: the mean of the most recent items;
4. an MLP over [candidate, ESU output, short-term, their products] gives the click logit; with `popularity`, the
   logit also adds a learned weight times the candidate's popularity (how often, or to how many users, the training
   pages showed it).

`catalog_logits` scores every catalog item by its cosine to the mean of the history's item vectors, for the
auxiliary softmax over the catalog that training can add (`reward.catalog_softmax_weight`, fit.py).

An item's vector is a learned id embedding plus one embedding per SID code, so items with few
exposures still share what their SID prefix knows, plus (`features`) one embedding per catalog column value such as
the item's category and brand. Items are addressed by row: 1 + the item's row in
the SID table (0 pads). Saved as safetensors + JSON; loading unpickles nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from genrec.errors import ConfigError, InputDataError

CONFIG_FILE = "reward_model.json"
WEIGHTS_FILE = "reward_model.safetensors"


class SimRewardModel(nn.Module):
    def __init__(self, item_ids: np.ndarray, codes: np.ndarray, sizes: tuple[int, ...], search: str, top_k: int,
                 recent: int, dim: int, heads: int, mlp: list[int], sid_fingerprint: str = "",
                 features: dict[str, tuple[np.ndarray, int]] | None = None, popularity: np.ndarray | None = None):
        """`features`: column name -> (each item's value index in [0, n), n), in the order of `item_ids`.
        `popularity`: one number per item in that order (`exposure_popularity`); the logit adds it times a learned
        weight."""
        super().__init__()
        if search not in ("hard", "soft"):
            raise ConfigError(f"reward.search must be hard or soft, got {search!r}")
        features = features or {}
        self.hparams = {"sizes": list(sizes), "search": search, "top_k": top_k, "recent": recent, "dim": dim,
                        "heads": heads, "mlp": list(mlp), "sid_fingerprint": sid_fingerprint,
                        "features": {name: int(n) for name, (_, n) in features.items()},
                        "popularity": popularity is not None}
        n = len(item_ids)
        self.register_buffer("item_ids", torch.as_tensor(np.asarray(item_ids, dtype=np.int64)))
        padded = np.concatenate([np.zeros((1, len(sizes)), np.int64), np.asarray(codes, np.int64)])
        self.register_buffer("codes", torch.as_tensor(padded))  # (n + 1, L); row 0 pads
        self.item_emb = nn.Embedding(n + 1, dim, padding_idx=0)
        self.code_emb = nn.ModuleList(nn.Embedding(k, dim) for k in sizes)
        self.feature_emb = nn.ModuleDict()
        for name, (values, n_values) in features.items():
            # Row 0 pads, as for the item rows; a value's embedding is row value + 1.
            self.register_buffer(f"feature_{name}", torch.as_tensor(np.concatenate([[0], np.asarray(values) + 1])))
            self.feature_emb[name] = nn.Embedding(n_values + 1, dim, padding_idx=0)
        if popularity is not None:
            self.register_buffer("item_popularity", torch.as_tensor(
                np.concatenate([[0.0], np.asarray(popularity, np.float64)]), dtype=torch.float32))
            # Starts at 0: the model begins as without it and learns how much the prior is worth.
            self.popularity_weight = nn.Parameter(torch.zeros(()))
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        layers, width = [], 5 * dim
        for h in mlp:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))
        # The catalog softmax's inverse temperature; a parameter so that save/load is uniform, used only in training.
        self.softmax_scale = nn.Parameter(torch.tensor(10.0))
        nn.init.normal_(self.item_emb.weight, std=0.02)
        for e in [*self.code_emb, *self.feature_emb.values()]:
            nn.init.normal_(e.weight, std=0.1)

    @property
    def sid_fingerprint(self) -> str:
        return self.hparams["sid_fingerprint"]

    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        codes = self.codes[rows]
        vec = self.item_emb(rows)
        for level, table in enumerate(self.code_emb):
            vec = vec + table(codes[..., level])
        for name, table in self.feature_emb.items():
            vec = vec + table(getattr(self, f"feature_{name}")[rows])
        return vec * (rows > 0).unsqueeze(-1)

    def search(self, history: torch.Tensor, cand: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """GSU: (B, k) indices into the history and a (B, k) mask of real picks."""
        valid = history > 0
        length = history.shape[1]
        if self.hparams["search"] == "hard":
            same = self.codes[history, 0] == self.codes[cand, 0].unsqueeze(1)
            recency = torch.arange(length, device=history.device, dtype=torch.float32) / max(length, 1)
            score = torch.where(same & valid, recency.expand_as(history), torch.tensor(float("-inf"), device=history.device))
        else:
            hn, cn = nn.functional.normalize(h.detach(), dim=-1), nn.functional.normalize(c.detach(), dim=-1)
            score = (hn * cn.unsqueeze(1)).sum(-1).masked_fill(~valid, float("-inf"))
        top, idx = torch.topk(score, min(self.hparams["top_k"], length), dim=1)
        return idx, torch.isfinite(top)

    def forward(self, history: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """history (B, H) item rows, most recent last, 0 = padding; cand (B,) rows -> (B,) click logits."""
        h, c = self.item_vectors(history), self.item_vectors(cand)
        idx, picked = self.search(history, cand, h, c)
        sel = torch.gather(h, 1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        keys = torch.cat([self.null.expand(len(h), 1, -1), sel], dim=1)
        ignore = torch.cat([torch.zeros(len(h), 1, dtype=torch.bool, device=h.device), ~picked], dim=1)
        att, _ = self.attn(c.unsqueeze(1), keys, keys, key_padding_mask=ignore, need_weights=False)
        att = att.squeeze(1)
        recent = self.hparams["recent"]
        short = masked_mean(h[:, -recent:], history[:, -recent:])
        logit = self.mlp(torch.cat([c, att, short, c * att, c * short], dim=-1)).squeeze(-1)
        if self.hparams["popularity"]:
            logit = logit + self.popularity_weight * self.item_popularity[cand]
        return logit

    def interest(self, history: torch.Tensor) -> torch.Tensor:
        """(B, dim) mean of the history's item vectors (all of `history`, padding excluded)."""
        return masked_mean(self.item_vectors(history), history)

    def catalog_logits(self, history: torch.Tensor) -> torch.Tensor:
        """(B, n_items) softmax_scale x cos(history mean, item vector) for every catalog item (column r = row r + 1)."""
        u = nn.functional.normalize(self.interest(history), dim=-1)
        rows = torch.arange(1, len(self.item_ids) + 1, device=history.device)
        v = nn.functional.normalize(self.item_vectors(rows), dim=-1)
        return self.softmax_scale * u @ v.T

    @torch.no_grad()
    def score(self, history: torch.Tensor, cand: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """r_pref = sigmoid(logit) for each (history row, candidate), in batches; rows of cand <= 0 score 0."""
        self.eval()
        out = []
        for lo in range(0, len(cand), batch_size):
            c = cand[lo:lo + batch_size]
            p = torch.sigmoid(self(history[lo:lo + batch_size], c.clamp(min=0)))
            out.append(torch.where(c > 0, p, torch.zeros_like(p)))
        return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)

    def save(self, out_dir: str | Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CONFIG_FILE).write_text(json.dumps({"format": 1, **self.hparams}, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
        return out_dir

    @classmethod
    def load(cls, model_dir: str | Path) -> "SimRewardModel":
        """Rebuild from reward_model.json and the safetensors weights; `model_dir` may be train-reward's folder."""
        model_dir = Path(model_dir)
        if (model_dir / "reward_model").is_dir():
            model_dir = model_dir / "reward_model"
        if not (model_dir / CONFIG_FILE).is_file() or not (model_dir / WEIGHTS_FILE).is_file():
            raise ConfigError(f"{model_dir}: not a reward model folder (expected {CONFIG_FILE} and {WEIGHTS_FILE}; "
                              "run train-reward first)")
        meta = json.loads((model_dir / CONFIG_FILE).read_text())
        state = load_file(str(model_dir / WEIGHTS_FILE))
        codes = state["codes"][1:].numpy()
        features = {name: (state[f"feature_{name}"][1:].numpy() - 1, n) for name, n in meta.get("features", {}).items()}
        popularity = state["item_popularity"][1:].numpy() if meta.get("popularity") else None
        model = cls(state["item_ids"].numpy(), codes, tuple(meta["sizes"]), meta["search"], meta["top_k"],
                    meta["recent"], meta["dim"], meta["heads"], meta["mlp"], meta.get("sid_fingerprint", ""), features,
                    popularity)
        state.setdefault("softmax_scale", model.softmax_scale.detach().clone())  # saved before the option existed
        model.load_state_dict(state)
        return model.eval()


def masked_mean(vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, dim) mean of `vectors` (B, H, dim) over the positions whose item row is not padding (rows > 0);
    zeros for a row of padding only."""
    w = (rows > 0).float().unsqueeze(-1)
    return (vectors * w).sum(1) / w.sum(1).clamp(min=1)


def history_rows(histories: list[list[int]], sid_map, length: int, where: str) -> torch.Tensor:
    """Left-padded (N, length) tensor of 1-based item rows (most recent last); an unknown item raises naming `where`."""
    out = np.zeros((len(histories), length), dtype=np.int64)
    for r, hist in enumerate(histories):
        rows = sid_map.rows(hist[-length:], where) + 1 if len(hist) else np.zeros(0, np.int64)
        if len(rows):
            out[r, -len(rows):] = rows
    return torch.from_numpy(out)


def item_feature_values(items: pd.DataFrame, item_ids: np.ndarray, columns: list[str],
                        where: str) -> dict[str, tuple[np.ndarray, int]]:
    """For each column of the catalog `items` (item_id + columns): every item's value index, in the order of
    `item_ids`, and the number of values (a missing value is a value of its own). An item of `item_ids` that the
    catalog lacks, a missing column or a duplicated item_id raises naming `where`."""
    missing_cols = [c for c in ["item_id", *columns] if c not in items.columns]
    if missing_cols:
        raise InputDataError(f"{where}: no column {missing_cols} (reward.item_features needs them)")
    dup = items["item_id"][items["item_id"].duplicated()]
    if len(dup):
        raise InputDataError(f"{where}: item_id {int(dup.iloc[0])} appears more than once ({len(dup)} duplicates)")
    absent = np.setdiff1d(item_ids, items["item_id"].to_numpy())
    if len(absent):
        raise InputDataError(f"{where}: {len(absent)} items of the SID table are not in the catalog (e.g. item_id "
                             f"{int(absent[0])})")
    table = items.set_index("item_id").reindex(np.asarray(item_ids))
    out = {}
    for column in columns:
        values, uniques = pd.factorize(table[column].fillna("").astype(str))
        out[column] = (values.astype(np.int64), len(uniques))
    return out
