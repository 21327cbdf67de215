"""Item text, encoders (the bundled MiniLM, and tiny BERT / CLIP checkpoints saved here), fusion, fine-tuning."""

import numpy as np
import pytest
import torch
from PIL import Image

from genrec.config import FinetuneConfig
from genrec.embed.encoders import ImageEncoder, TextEncoder, default_text_model, fuse
from genrec.embed.finetune import finetune_head
from genrec.embed.item_text import item_text
from genrec.errors import ConfigError


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder()


def test_item_text_template():
    assert item_text("Red Lipstick", "Lumora", "Beauty > Makeup", "Soft.") == \
        "Red Lipstick. Brand: Lumora. Category: Beauty > Makeup. Soft."
    assert item_text(None, None, "Movies > Drama", float("nan")) == "Category: Movies > Drama."
    assert item_text(None, "  ", None, None) == ""


def test_bundled_minilm_encodes_meaningfully(minilm):
    e = minilm.encode(["red lipstick for lips", "a lipstick in red", "wireless bluetooth headphones"])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    assert np.array_equal(e, minilm.encode(["red lipstick for lips", "a lipstick in red", "wireless bluetooth headphones"]))


def _tokenizer_into(path):
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(default_text_model(), local_files_only=True).save_pretrained(path)


def test_any_local_text_checkpoint_loads(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path)
    _tokenizer_into(tmp_path)
    enc = TextEncoder(tmp_path, max_length=32)
    out = enc.encode(["one item", "another item with a longer text"])
    assert enc.dim == 32 and out.shape == (2, 32) and np.isfinite(out).all()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=64),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        image_size=32, patch_size=8),
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    _tokenizer_into(path)
    return path


def test_tiny_clip_encodes_both_views_into_one_space(tiny_clip):
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue", "red")]
    img = ImageEncoder(tiny_clip)
    txt = TextEncoder(tiny_clip)
    vi, vt = img.encode(images), txt.encode(["a red item", "a blue item", "a red item"])
    assert img.kind == txt.kind == "clip" and vi.shape == vt.shape == (3, 16)
    assert np.allclose(vi[0], vi[2]) and not np.allclose(vi[0], vi[1])
    fused = fuse(vt, vi, np.array([True, True, False]), "mean", 0.5)
    assert np.allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-5)
    assert np.allclose(fused[2], vt[2], atol=1e-6)  # no image: the text view alone


def test_fusion_rules():
    t = np.eye(3, 4, dtype=np.float32)
    i = np.eye(3, 2, dtype=np.float32)
    has = np.array([True, False, True])
    out = fuse(t, i, has, "concat", 0.36)
    assert out.shape == (3, 6) and np.allclose(np.linalg.norm(out, axis=1), 1)
    assert np.allclose(out[1, 4:], 0)
    assert np.isclose(out[0, 0], 0.8) and np.isclose(out[0, 4], 0.6)
    with pytest.raises(ConfigError, match="one space"):
        fuse(t, i, has, "mean", 0.5)
    assert fuse(t, None, has, "concat", 0.5) is t


def test_bad_model_paths_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        TextEncoder(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not a Hugging Face checkpoint"):
        TextEncoder(tmp_path)


def test_finetuning_pulls_coengaged_items_together():
    """Base vectors know nothing; co-engagement follows hidden clusters: held-out recall must rise a lot."""
    rng = np.random.default_rng(0)
    n, clusters = 300, 30
    base = rng.normal(size=(n, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    cluster = np.arange(n) % clusters
    a = rng.integers(0, n, 6000)
    b = np.array([rng.choice(np.flatnonzero((cluster == cluster[i]) & (np.arange(n) != i))) for i in a])
    pairs = np.unique(np.sort(np.stack([a, b], axis=1), axis=1), axis=0)
    res = finetune_head(base, pairs, np.ones(len(pairs)), FinetuneConfig(epochs=15, batch_size=128), seed=0)
    assert res.recall_before < 0.1 and res.recall_after > 0.5, (res.recall_before, res.recall_after)
    assert res.losses[-1] < res.losses[0]
