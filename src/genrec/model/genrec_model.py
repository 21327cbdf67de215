"""The GenRec model: a Qwen2 decoder (transformers) over SID tokens, with the Token Merger on the prompt side.

Every position of a sequence carries `levels` token ids and an `is_item` flag:
- is_item = True (prompt side, Token Merger on): the position is one history item; its SID tokens'
  embeddings are concatenated and projected by one linear layer into one vector (paper eq. 5);
- is_item = False: an ordinary token (special token, or one SID code), whose id is column 0.
The target side and the loss always use ordinary SID tokens. With the Token Merger off ("w/o TM")
every position is ordinary and a history item takes `levels` positions.

Saved as model.safetensors + genrec_model.json (backbone config, vocabulary, SID fingerprint); loading
builds the modules from the JSON and reads tensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import Qwen2Config, Qwen2ForCausalLM

from genrec.errors import ConfigError
from genrec.model.copy_head import (CopyHead, copy_prefix_logmass, history_slots, mixture_token_logprobs)
from genrec.model.item_softmax import item_softmax_nll, target_item_spans
from genrec.model.rank_head import RankHead
from genrec.model.vocab import SidVocab

MODEL_FILE, CONFIG_FILE = "model.safetensors", "genrec_model.json"

# Scaled-dot-product attention backends the model may use: all but cuDNN's. For bf16 inputs on an H100,
# torch picks cuDNN's fused attention, which builds an execution plan for every new sequence shape (~17 ms
# of CPU per call, measured); length-grouped batches and beam search bring new shapes at almost every
# step, and DeepSpeed bf16 training of the demo model ran 10x slower than fp32 (bench/results/gpu_sft.md).
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

# Backbone shapes. The qwen2.5-* presets are the shapes of the released Qwen2.5 models (weights are not
# downloaded: load a local checkpoint with model.pretrained_path to start from them, as the paper does).
SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                 tie_word_embeddings=True),
    "demo": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=384,
                 tie_word_embeddings=True),
    "small": dict(hidden_size=384, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2,
                  intermediate_size=1152, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                       intermediate_size=11008, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       intermediate_size=18944, tie_word_embeddings=False),
}


def level_uniform_logprob(logsm: torch.Tensor, labels: torch.Tensor, vocab: SidVocab) -> torch.Tensor:
    """(B, T): the mean log-probability over the codes of each label's own SID level (0 where the label is not
    a code). Label smoothing's uniform part: smoothing mass goes to the level's other codes only, never to the
    special tokens or another level's codes, which the trie never allows there and free decoding would count
    as hallucinations."""
    out = torch.zeros(labels.shape, dtype=logsm.dtype, device=logsm.device)
    for level in range(vocab.levels):
        start = vocab.level_start(level)
        end = start + vocab.sizes[level]
        out = torch.where((labels >= start) & (labels < end), logsm[..., start:end].mean(-1), out)
    return out


# Odd multipliers of the SID hash (item_bucket): large, so items that differ in one code land far apart.
_HASH_MULTIPLIERS = (1_000_003, 7_919_251, 104_729_017, 2_147_483_629)


def item_bucket(ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """(..., L) an item's code token ids -> (...) its bucket in [0, buckets): a hash of the whole SID, so each item
    (its SIDs are unique after assign-sids) gets its own row up to hash collisions."""
    mult = torch.tensor(_HASH_MULTIPLIERS[: ids.shape[-1]], dtype=torch.int64, device=ids.device)
    return (ids.long() * mult).sum(-1).remainder(buckets)


def catalog_buckets(codes: np.ndarray, vocab: SidVocab, buckets: int) -> torch.Tensor:
    """(n_items, L) SID codes of the catalog -> the sorted distinct rows its items use: the item softmax's
    candidates (sft.item_softmax_weight; items that share a row by a hash collision are one candidate)."""
    return torch.unique(item_bucket(torch.from_numpy(vocab.code_tokens(codes)), buckets))


def history_code_positions(ids: torch.Tensor) -> torch.Tensor:
    """(B, T, L) w/o-TM ids -> (B, T) True where the position is a code of a history item: its row holds the item's
    whole SID (samples.encode_prompt), while special and target rows repeat one token."""
    return ids[..., 0] != ids[..., 1]


def whole_sids(ids: torch.Tensor) -> torch.Tensor:
    """(B, T, L) w/o-TM ids -> the SID of each history-code row in level order: a row is its item's SID rotated, and
    the levels' token ranges ascend, so sorting restores the order (rows that repeat one token stay as they are)."""
    return ids.sort(dim=-1).values


@dataclass
class ModelOut:
    logits: torch.Tensor  # (B, T or logits_to_keep, V)
    hidden: torch.Tensor  # (B, T, d) the backbone's last hidden states (after the final norm)
    past_key_values: object = None


@dataclass
class CopyState:
    """A prompt's copy distribution for decoding (genrec.model.copy_head); one row per prompt."""

    log_attn: torch.Tensor  # (N, H)
    slot_codes: torch.Tensor  # (N, H, L)
    log_g: torch.Tensor  # (N,)
    log_1m_g: torch.Tensor  # (N,)


class GenRecModel(nn.Module):
    """Qwen2ForCausalLM + Token Merger (+ copy head). `forward` takes (ids (B,T,L), is_item (B,T)) instead of
    input ids."""

    def __init__(self, lm: Qwen2ForCausalLM, vocab: SidVocab, token_merger: bool, sid_fingerprint: str = "",
                 copy_head: bool = False, dropout: float = 0.0, rank_lambdas: tuple[int, ...] | None = None,
                 rank_model_weight: float = 0.0, rank_model_feature: bool = False, hidden_dropout: float = 0.0,
                 item_embedding_buckets: int = 0):
        super().__init__()
        self.lm = lm
        self.vocab = vocab
        self.sid_fingerprint = sid_fingerprint
        d, levels = lm.config.hidden_size, vocab.levels
        self.merger = nn.Linear(levels * d, d) if token_merger else None
        if self.merger is not None:
            # Start as the mean of the item's code embeddings: a merged item begins where its codes are.
            with torch.no_grad():
                self.merger.weight.copy_(torch.cat([torch.eye(d) / levels] * levels, dim=1))
                self.merger.bias.zero_()
        # A per-item input row (SASRec's item memory) added to each history item (its merged position, or w/o TM
        # each of its code positions); zero at the start, so the model begins as the paper's. Targets are still
        # generated code by code.
        self.item_table = None
        if item_embedding_buckets:
            if levels < 2:
                raise ConfigError("model.item_embedding_buckets needs SIDs of at least 2 levels (with one level the "
                                  "code is the item)")
            self.item_table = nn.Embedding(item_embedding_buckets, d)
            nn.init.zeros_(self.item_table.weight)
        self.copy = CopyHead(d) if copy_head else None
        # RankGR's RSP (genrec.model.rank_head)
        self.rank = RankHead(d, rank_lambdas, rank_model_weight, rank_model_feature) if rank_lambdas else None
        # Regularisation for small datasets: on the input embeddings here, on the attention probabilities in the
        # backbone. Active in train mode only (SFT); decoding, evaluation and alignment run in eval mode.
        self.dropout = float(dropout)
        self.input_dropout = nn.Dropout(self.dropout)
        lm.config.attention_dropout = self.dropout
        for layer in lm.model.layers:
            layer.self_attn.attention_dropout = self.dropout
        # Qwen2 has no dropout on what a block adds to the residual stream (GPT-2 and SASRec do): hooks on the
        # attention's and the MLP's output projections add it without changing the state dict's keys, so Qwen
        # checkpoints still load.
        self.hidden_dropout = float(hidden_dropout)
        if self.hidden_dropout > 0:
            for layer in lm.model.layers:
                layer.self_attn.o_proj.register_forward_hook(self._drop_block_output)
                layer.mlp.down_proj.register_forward_hook(self._drop_block_output)

    def _drop_block_output(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(output, self.hidden_dropout, training=module.training)

    @property
    def token_merger(self) -> bool:
        return self.merger is not None

    @property
    def copy_head(self) -> bool:
        return self.copy is not None

    def add_rank_head(self, lambdas: tuple[int, ...], model_weight: float = 0.0, model_feature: bool = False
                      ) -> None:
        """Give the model a fresh rank head (RankGR's RSP) keeping `lambdas[l]` codes at level l; decoding then
        rescores with it, adding `model_weight` times the model's own log-probability; with `model_feature` the
        head also takes each code's log-probability as an input (genrec.model.rank_head). Initialised from torch's
        global RNG (seed it first)."""
        if len(lambdas) != self.vocab.levels:
            raise ConfigError(f"the rank head needs one lambda per SID level ({self.vocab.levels}); got {list(lambdas)}")
        d = self.lm.config.hidden_size
        self.rank = RankHead(d, tuple(lambdas), model_weight, model_feature).to(self.lm.device)

    def embed(self, ids: torch.Tensor, is_item: torch.Tensor) -> torch.Tensor:
        """(B, T, L) ids and (B, T) flags -> (B, T, d) input embeddings."""
        table = self.lm.get_input_embeddings()
        plain = table(ids[..., 0])
        if self.merger is None:
            if self.item_table is not None:
                rows = self.item_table(item_bucket(whole_sids(ids), self.item_table.num_embeddings))
                plain = plain + rows * history_code_positions(ids).unsqueeze(-1)
            return self.input_dropout(plain)
        merged = self.merger(table(ids).flatten(-2))
        if self.item_table is not None:
            merged = merged + self.item_table(item_bucket(ids, self.item_table.num_embeddings))
        return self.input_dropout(torch.where(is_item.unsqueeze(-1), merged, plain))

    def forward(self, ids: torch.Tensor, is_item: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False,
                logits_to_keep: int = 0):
        """Logits (of the last `logits_to_keep` positions, 0: all), hidden states, and the KV cache when `use_cache`."""
        with sdpa_kernel(SDPA_BACKENDS):
            out = self.lm.model(inputs_embeds=self.embed(ids, is_item), attention_mask=attention_mask,
                                position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache)
        hidden = out.last_hidden_state
        kept = hidden if logits_to_keep == 0 else hidden[:, -logits_to_keep:]
        return ModelOut(self.lm.lm_head(kept), hidden, out.past_key_values)

    def target_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T-1): log p(token t+1 | tokens <= t) of each labelled token (labels[:, 1:]; garbage where -100).
        With the copy head, an item's code tokens get the mixture's per-code conditionals (copy_head.py)."""
        return self._logprobs(batch)[1]

    def _logprobs(self, batch: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The backbone's own target log-probabilities, the model's (the mixture's, with a copy head), the
        backbone's full (B, T-1, V) log-softmax, and its (B, T, d) hidden states."""
        out = self(batch["ids"], batch["is_item"], batch["attention_mask"])
        labels = batch["labels"][:, 1:]
        logsm = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
        logp = logsm.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        if self.copy is None:
            return logp, logp, logsm, out.hidden
        levels = self.vocab.levels
        rows, span = target_item_spans(labels, self.vocab)  # span: (M, L) shifted indices of the codes
        if len(rows) == 0:
            return logp, logp, logsm, out.hidden
        starts = span[:, 0]
        prompt = (batch["labels"] == -100).cumprod(dim=1).bool() & batch["attention_mask"].bool()
        slots = history_slots(batch["ids"], batch["is_item"], prompt, self.vocab)
        level_starts = torch.tensor([self.vocab.level_start(i) for i in range(levels)], device=logp.device)
        codes = labels[rows.unsqueeze(1), span] - level_starts
        # The query is the state that predicts the item's first code: shifted index s is position s.
        slot_h = torch.gather(out.hidden, 1, slots.pos.unsqueeze(-1).expand(-1, -1, out.hidden.shape[-1]))
        log_attn, log_g, log_1m_g = self.copy(out.hidden[rows, starts], slot_h[rows], slots.valid[rows],
                                              slots.recency[rows])
        mixed = mixture_token_logprobs(logp[rows.unsqueeze(1), span], copy_prefix_logmass(
            log_attn, slots.codes[rows], codes), log_g, log_1m_g)
        return logp, logp.index_put((rows.unsqueeze(1).expand_as(span), span), mixed), logsm, out.hidden

    def loss(self, batch: dict[str, torch.Tensor], generator_weight: float = 0.0,
             label_smoothing: float = 0.0, item_softmax_weight: float = 0.0,
             item_candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood of the target tokens only (labels -100 elsewhere), mean per target token.
        With a copy head, `generator_weight` adds the backbone's own NLL of the same targets, so the SID generator
        keeps modelling every target item, the repeated ones too, rather than leaving them to the copy head.
        `label_smoothing` eps: each SID code target is (1 - eps) its code + eps uniform over its level's codes
        (level_uniform_logprob); <sep> / <eos> targets stay one-hot. `item_softmax_weight` adds that times the
        item softmax's mean NLL over `item_candidates` (catalog_buckets; genrec.model.item_softmax)."""
        gen, model, logsm, hidden = self._logprobs(batch)
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        if label_smoothing > 0:
            if self.copy is not None:
                raise ConfigError("label smoothing is defined on the SID generator's distribution; the copy head's "
                                  "mixture has none (model.copy_head)")
            uniform = level_uniform_logprob(logsm, labels, self.vocab)
            is_code = labels >= self.vocab.level_start(0)
            model = torch.where(is_code, (1 - label_smoothing) * model + label_smoothing * uniform, model)
        loss = -model[mask].mean()
        if generator_weight > 0:
            if self.copy is None:
                raise ConfigError("a generator loss weight needs a model with a copy head (model.copy_head)")
            loss = loss - generator_weight * gen[mask].mean()
        if item_softmax_weight > 0:
            if self.item_table is None or item_candidates is None:
                raise ConfigError("an item softmax needs per-item rows (model.item_embedding_buckets) and the "
                                  "catalog's rows (catalog_buckets)")
            rows, span = target_item_spans(labels, self.vocab)
            targets = item_bucket(labels[rows.unsqueeze(1), span], self.item_table.num_embeddings)
            loss = loss + item_softmax_weight * item_softmax_nll(hidden[rows, span[:, 0]], targets,
                                                                 self.item_table(item_candidates), item_candidates)
        return loss

    def copy_state(self, out: ModelOut, ids: torch.Tensor, is_item: torch.Tensor, attention_mask: torch.Tensor
                   ) -> CopyState | None:
        """The copy distribution of prompts just run through `forward` (their last position is the query);
        None without a copy head."""
        if self.copy is None:
            return None
        slots = history_slots(ids, is_item, attention_mask.bool(), self.vocab)
        slot_h = torch.gather(out.hidden, 1, slots.pos.unsqueeze(-1).expand(-1, -1, out.hidden.shape[-1]))
        log_attn, log_g, log_1m_g = self.copy(out.hidden[:, -1], slot_h, slots.valid, slots.recency)
        return CopyState(log_attn, slots.codes, log_g, log_1m_g)

    def save(self, out_dir: str | Path) -> Path:
        """model.safetensors + genrec_model.json in `out_dir`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"format": 1, "backbone": self.lm.config.to_diff_dict(), "vocab": self.vocab.to_dict(),
                "token_merger": self.token_merger, "copy_head": self.copy_head, "dropout": self.dropout,
                "rank_lambdas": list(self.rank.lambdas) if self.rank is not None else None,
                "rank_model_weight": self.rank.model_weight if self.rank is not None else None,
                "rank_model_feature": self.rank.model_feature if self.rank is not None else None,
                "hidden_dropout": self.hidden_dropout, "sid_fingerprint": self.sid_fingerprint,
                "item_embedding_buckets": self.item_table.num_embeddings if self.item_table is not None else 0}
        (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        save_model(self, str(out_dir / MODEL_FILE))  # handles the tied input/output embeddings
        return out_dir

    @classmethod
    def load(cls, model_dir: str | Path) -> "GenRecModel":
        """Rebuild from genrec_model.json and read the tensors (safetensors; nothing unpickled).
        `model_dir` is the model folder or a stage folder holding it as model/ (train-sft's, align's)."""
        model_dir = model_folder(model_dir)
        cfg_path, weights = model_dir / CONFIG_FILE, model_dir / MODEL_FILE
        if not cfg_path.is_file() or not weights.is_file():
            raise ConfigError(f"{model_dir}: not a genrec model folder (expected {CONFIG_FILE} and {MODEL_FILE}; "
                              "run train-sft first)")
        meta = json.loads(cfg_path.read_text())
        backbone = {k: v for k, v in meta["backbone"].items() if k not in ("model_type", "transformers_version")}
        lm = Qwen2ForCausalLM(Qwen2Config(**backbone))
        model = cls(lm, SidVocab.from_dict(meta["vocab"]), meta["token_merger"], meta.get("sid_fingerprint", ""),
                    meta.get("copy_head", False), meta.get("dropout", 0.0), meta.get("rank_lambdas"),
                    meta.get("rank_model_weight") or 0.0, bool(meta.get("rank_model_feature")),
                    meta.get("hidden_dropout", 0.0), meta.get("item_embedding_buckets", 0))
        load_model(model, str(weights))
        return model.eval()


def model_folder(path: str | Path) -> Path:
    """The model folder of a train-sft / align output folder (its model/), or `path` itself."""
    path = Path(path)
    return path / "model" if (path / "model").is_dir() else path


def build_model(size: str, pretrained_path: str, vocab_sizes: tuple[int, ...], token_merger: bool,
                sid_fingerprint: str, attn_implementation: str = "sdpa", max_positions: int = 4096,
                copy_head: bool = False, dropout: float = 0.0, hidden_dropout: float = 0.0,
                item_embedding_buckets: int = 0) -> GenRecModel:
    """A new model: from a size preset (random init) or a local Qwen2 checkpoint (embeddings resized).

    With a checkpoint, our tokens are appended after its own vocabulary and the new rows start at the
    mean of the existing embeddings plus small noise (transformers' mean resizing), so the first
    steps do not see outlier logits.
    """
    if pretrained_path:
        path = Path(pretrained_path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.pretrained_path {path}: no config.json (a Qwen2 checkpoint saved with save_pretrained)")
        lm = Qwen2ForCausalLM.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32,
                                              attn_implementation=attn_implementation)
        if lm.config.model_type != "qwen2":
            raise ConfigError(f"model.pretrained_path {path} is a {lm.config.model_type} checkpoint; expected qwen2")
        vocab = SidVocab(tuple(vocab_sizes), offset=lm.config.vocab_size)
        lm.resize_token_embeddings(vocab.vocab_size, mean_resizing=True)
    else:
        if size not in SIZES:
            raise ConfigError(f"model.size {size!r} is unknown; choose one of {sorted(SIZES)}")
        vocab = SidVocab(tuple(vocab_sizes))
        shape = SIZES[size]
        cfg = Qwen2Config(vocab_size=vocab.vocab_size, max_position_embeddings=max_positions,
                          pad_token_id=vocab.pad, bos_token_id=vocab.bos, eos_token_id=vocab.eos,
                          attn_implementation=attn_implementation, **shape)
        lm = Qwen2ForCausalLM(cfg)
    return GenRecModel(lm, vocab, token_merger, sid_fingerprint, copy_head, dropout, hidden_dropout=hidden_dropout,
                       item_embedding_buckets=item_embedding_buckets)
