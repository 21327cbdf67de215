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


def test_length_ordered_batches_keep_each_item_its_own_vectors(tiny_clip, tmp_path):
    """_encode batches items by text length; every row must still hold its own item's text and image views."""
    from genrec.config import load_config
    from genrec.stages.embed_items import _encode

    texts = ["a red item with a much longer description than the others", "blue", "a red item", "green thing",
             "a fairly long yellow item text", "x"]
    colours = ["red", "blue", None, "green", "yellow", "red"]
    paths = []
    for k, c in enumerate(colours):
        if c is None:
            paths.append(None)
            continue
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (40, 40), c).save(paths[-1])
    cfg = load_config(None, [f"embed.text_model={tiny_clip}", f"embed.image_model={tiny_clip}", "embed.batch_size=2",
                             "embed.chunk_size=4", "embed.fusion=concat"])
    emb, n_img = _encode(cfg, texts, paths, tmp_path / "emb.npy")
    txt, img = TextEncoder(tiny_clip), ImageEncoder(tiny_clip)
    one_by_one = np.stack([fuse(txt.encode([t]), img.encode([Image.open(p)]) if p else np.zeros((1, img.dim), np.float32),
                                np.array([p is not None]), "concat", cfg.embed.image_weight)[0]
                           for t, p in zip(texts, paths)])
    assert n_img == 5 and np.allclose(emb, one_by_one, atol=1e-5)
    # embed.precision=bf16: the same rows in bf16 autocast, float32 out, close to the fp32 vectors
    half, _ = _encode(cfg.model_copy(update={"embed": cfg.embed.model_copy(update={"precision": "bf16"})}), texts, paths,
                      tmp_path / "emb16.npy")
    assert half.dtype == np.float32 and not np.array_equal(half, emb)
    assert ((half * emb).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(emb, axis=1)).min() > 0.99


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
    # the returned parameters are the chosen epoch's: they rebuild the returned embeddings
    rebuilt = base @ res.head_weight.T + res.residual
    rebuilt /= np.linalg.norm(rebuilt, axis=1, keepdims=True)
    assert np.allclose(rebuilt, res.embeddings, atol=1e-5)


def _planted_cluster_catalog(n=200, clusters=20, seed=0):
    """Item texts = filler words + one cluster word; co-engagement pairs follow the clusters."""
    rng = np.random.default_rng(seed)
    words = ("apple river stone cloud paper glass music light forest metal window garden silver candle bridge winter "
             "ocean tiger rocket violet").split()
    fill = "red blue green small large soft hard new old fast slow warm cold bright dark long short round flat thin".split()
    cluster = np.arange(n) % clusters
    texts = [" ".join(list(rng.choice(fill, 4)) + [words[c]] + list(rng.choice(fill, 3))) for c in cluster]
    a = rng.integers(0, n, 3000)
    b = np.array([rng.choice(np.flatnonzero((cluster == cluster[i]) & (np.arange(n) != i))) for i in a])
    return texts, np.unique(np.sort(np.stack([a, b], axis=1), axis=1), axis=0)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(path)
    _tokenizer_into(path)
    return path


def test_encoder_finetuning_trains_the_encoder_itself(tiny_bert):
    """target=encoder: a random tiny BERT learns that the cluster word is what matters."""
    from genrec.embed.encoder_finetune import finetune_encoder

    texts, pairs = _planted_cluster_catalog()
    enc = TextEncoder(tiny_bert, max_length=32)
    before_weights = {k: v.clone() for k, v in enc.model.state_dict().items()}
    cfg = FinetuneConfig(target="encoder", epochs=3, batch_size=64, encoder_lr=1e-3)
    res = finetune_encoder(enc, texts, enc.encode(texts), pairs, np.ones(len(pairs)), cfg, 0, lambda e: e.encode(texts))
    assert res.recall_before < 0.15 and res.recall_after > 0.6, (res.recall_before, res.recall_after)
    assert res.head_weight is None and res.residual is None
    # the encoder is left at the chosen epoch's weights: it reproduces the returned embeddings
    assert not all(torch.equal(before_weights[k], v) for k, v in enc.model.state_dict().items())
    assert np.allclose(enc.encode(texts), res.embeddings, atol=1e-5)


def test_embed_stage_fine_tunes_and_saves_the_encoder(tiny_bert, make_cfg, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genrec.stages.embed_items import run_embed_items

    texts, pairs = _planted_cluster_catalog()
    (tmp_path / "validated").mkdir()
    (tmp_path / "pages" / "pairs").mkdir(parents=True)
    n = len(texts)
    pq.write_table(pa.table({"item_id": np.arange(100, 100 + n), "title": texts, "description": [None] * n,
                             "category": [None] * n, "brand": [None] * n, "price": [1.0] * n, "image_path": [None] * n}),
                   tmp_path / "validated" / "items.parquet")
    pq.write_table(pa.table({"item_a": pairs[:, 0] + 100, "item_b": pairs[:, 1] + 100, "n_sessions": np.ones(len(pairs))}),
                   tmp_path / "pages" / "pairs" / "part-0.parquet")
    cfg = make_cfg(f"embed.text_model={tiny_bert}", "embed.finetune.target=encoder", "embed.finetune.epochs=3",
                   "embed.finetune.batch_size=64", "embed.finetune.encoder_lr=1e-3")
    report = run_embed_items(cfg, tmp_path / "validated", tmp_path / "pages", tmp_path / "raw", tmp_path / "out", "enc-ft")
    assert report["recall_at10_after"] > 2 * report["recall_at10_before"], report
    final = np.load(tmp_path / "out" / "embeddings.npy")
    reloaded = TextEncoder(tmp_path / "out" / "encoder", cfg.embed.max_length)  # the saved encoder is a real checkpoint
    assert np.allclose(reloaded.encode(item_text(t, None, None, None) for t in texts), final, atol=1e-5)
    assert not (tmp_path / "out" / "head.safetensors").exists() and not (tmp_path / "out" / "embeddings_tuning.npy").exists()


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A tiny Qwen2.5-VL built from a config and saved here (tokenizer: the bundled one plus the vision tokens)."""
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLModel, Qwen2VLImageProcessor

    path = tmp_path_factory.mktemp("vlm")
    tok = AutoTokenizer.from_pretrained(default_text_model(), local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]})
    ids = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=512, bos_token_id=None, eos_token_id=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0], window_size=56),
        vision_start_token_id=ids[0], vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3])
    torch.manual_seed(0)
    Qwen2_5_VLModel(cfg).save_pretrained(path)
    Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_tiny_vlm_embeds_image_and_text_together(tiny_vlm):
    from genrec.embed.encoders import VLMEncoder, is_vlm

    enc = VLMEncoder(tiny_vlm)
    red, blue = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (56, 56), "blue")
    out = enc.encode(["a lipstick", "a lipstick", "a lipstick", "a lipstick"], [red, blue, None, red])
    assert is_vlm(tiny_vlm) and not is_vlm(default_text_model())
    assert out.shape == (4, 32) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert np.allclose(out[0], out[3], atol=1e-5)  # same image and text, other batch position
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[0], out[2])  # the image matters


def test_embed_stage_with_a_vlm(tiny_vlm, make_cfg, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genrec.stages.embed_items import run_embed_items

    (tmp_path / "validated").mkdir()
    (tmp_path / "raw" / "images").mkdir(parents=True)
    colours = ["red", "green", None, "blue"]
    for i, c in enumerate(colours):
        if c:
            Image.new("RGB", (60, 60), c).save(tmp_path / "raw" / "images" / f"{i}.png")
    pq.write_table(pa.table({"item_id": [0, 1, 2, 3], "title": ["a", "b", "c", "d"], "description": [None] * 4,
                             "category": ["X > Y"] * 4, "brand": [None] * 4, "price": [1.0] * 4,
                             "image_path": [f"images/{i}.png" if c else None for i, c in enumerate(colours)]}),
                   tmp_path / "validated" / "items.parquet")
    report = run_embed_items(make_cfg(f"embed.text_model={tiny_vlm}"), tmp_path / "validated", tmp_path / "pages",
                             tmp_path / "raw", tmp_path / "out", "vlm-stage")
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    assert report["n_with_image"] == 3 and report["dim"] == 32 and emb.shape == (4, 32)
    assert "finetune_skipped" in report  # no co-engagement pairs in this folder
    with pytest.raises(ConfigError, match="use embed.finetune.target=head"):
        run_embed_items(make_cfg(f"embed.text_model={tiny_vlm}", "embed.finetune.target=encoder"), tmp_path / "validated",
                        tmp_path / "pages", tmp_path / "raw", tmp_path / "out3", "vlm-stage-3")
    with pytest.raises(ConfigError, match="leave embed.image_model empty"):
        run_embed_items(make_cfg(f"embed.text_model={tiny_vlm}", f"embed.image_model={tiny_vlm}"), tmp_path / "validated",
                        tmp_path / "pages", tmp_path / "raw", tmp_path / "out2", "vlm-stage-2")


def _session_pairs(events):
    """Co-engagement pairs as sessionization defines them (30-minute gap), in pandas for a unit test."""
    ev = events.sort_values(["user_id", "ts", "event_id"])
    gap = ev.groupby("user_id")["ts"].diff().dt.total_seconds()
    ev = ev.assign(session=(gap.isna() | (gap > 1800)).cumsum())
    pos = ev[ev.event_type != "expose"][["session", "item_id"]].drop_duplicates()
    pairs = pos.merge(pos, on="session")
    pairs = pairs[pairs.item_id_x < pairs.item_id_y].groupby(["item_id_x", "item_id_y"]).size().reset_index()
    return pairs[["item_id_x", "item_id_y"]].to_numpy(), pairs[0].to_numpy(float)


def test_finetuning_improves_heldout_recall_on_the_simulator(minilm):
    from genrec.config import SimulatorConfig
    from genrec.data.simulator import simulate

    logs = simulate(SimulatorConfig(n_users=2200, n_items=5000, days=30), seed=42, progress=False)
    items = logs.items.to_pandas()
    base = np.concatenate([minilm.encode([item_text(r.title, r.brand, r.category, r.description) for r in chunk.itertuples()])
                           for chunk in (items.iloc[i:i + 128] for i in range(0, len(items), 128))])
    pairs, weights = _session_pairs(logs.events.to_pandas())
    res = finetune_head(base, pairs, weights, FinetuneConfig(), seed=42)
    assert res.n_heldout_pairs > 5000
    assert res.recall_after > 1.5 * res.recall_before, (res.recall_before, res.recall_after)


def test_embed_stage_rejects_empty_and_textless_catalogs(make_cfg, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genrec.errors import InputDataError
    from genrec.stages.embed_items import run_embed_items

    (tmp_path / "validated").mkdir()
    empty = pa.table({"item_id": pa.array([], pa.int64()), "title": pa.array([], pa.string()),
                      "description": pa.array([], pa.string()), "category": pa.array([], pa.string()),
                      "brand": pa.array([], pa.string()), "price": pa.array([], pa.float64()),
                      "image_path": pa.array([], pa.string())})
    pq.write_table(empty, tmp_path / "validated" / "items.parquet")
    with pytest.raises(InputDataError, match="the catalog is empty"):
        run_embed_items(make_cfg(), tmp_path / "validated", tmp_path, tmp_path, tmp_path / "out", "empty")
    textless = pa.table({"item_id": [1, 2, 3], "title": ["ok", None, " "], "description": [None] * 3, "category": [None] * 3,
                         "brand": [None] * 3, "price": [1.0] * 3, "image_path": [None, None, "images/3.png"]})
    pq.write_table(textless, tmp_path / "validated" / "items.parquet")
    with pytest.raises(InputDataError, match=r"2 items have no text .* first item ids: \[2, 3\]"):
        run_embed_items(make_cfg(), tmp_path / "validated", tmp_path, tmp_path, tmp_path / "out", "textless")


def _cluster_walk_pages(n_users=60, size=20, length=15, seed=0):
    """One training page per user: a random walk inside one of two item clusters (0..size-1, size..2*size-1)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        walk = [int(x) for x in (u % 2) * size + rng.integers(0, size, length)]
        rows.append({"page_id": f"u{u}", "user_id": u, "page_start": pd.Timestamp("2026-10-01", tz="UTC"),
                     "history_items": walk[:-1], "ordered_items": [], "carted_items": [], "clicked_items": walk[-1:],
                     "exposed_items": [], "split": "train"})
    return pd.DataFrame(rows)


def test_sequence_vectors_group_the_items_that_follow_the_same_histories():
    from genrec.config import SasrecConfig
    from genrec.embed.sequence_vectors import sasrec_item_vectors

    vec = sasrec_item_vectors(_cluster_walk_pages(), np.arange(40), SasrecConfig(hidden=16, batch_size=16), epochs=15,
                              max_len=15, seed=0)
    unit = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    cos = unit @ unit.T
    cluster = np.arange(40) // 20
    same = np.equal.outer(cluster, cluster)
    # after 1 epoch the gap is ~0.05; trained for 15, ~1.6: the clusters separate
    assert cos[same & ~np.eye(40, dtype=bool)].mean() - cos[~same].mean() > 0.3


def test_collaborative_fusion_is_a_weighted_sum_of_the_two_cosines():
    from genrec.embed.sequence_vectors import fuse_collaborative

    rng = np.random.default_rng(0)
    content, collab = rng.normal(size=(5, 8)), rng.normal(size=(5, 3))
    fused = fuse_collaborative(content, collab, 0.3)
    assert fused.shape == (5, 11) and np.allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-6)

    def cos(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return x @ x.T

    assert np.allclose(fused @ fused.T, 0.7 * cos(content) + 0.3 * cos(collab), atol=1e-5)
    with pytest.raises(ValueError, match="5 content vectors but 4 collaborative"):
        fuse_collaborative(content, collab[:4], 0.3)


def test_embed_stage_fuses_sequence_vectors_from_the_training_pages(sft_data, make_cfg, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genrec.stages.embed_items import run_embed_items

    (tmp_path / "validated").mkdir()
    n = 64  # sft_data's catalog: items 0..63, users walking it
    pq.write_table(pa.table({"item_id": np.arange(n), "title": [f"item {i}" for i in range(n)], "description": [None] * n,
                             "category": [None] * n, "brand": [None] * n, "price": [1.0] * n, "image_path": [None] * n}),
                   tmp_path / "validated" / "items.parquet")
    cfg = make_cfg("embed.collaborative_weight=0.25", "embed.collaborative_epochs=2", "eval.sasrec.hidden=16")
    report = run_embed_items(cfg, tmp_path / "validated", sft_data / "pages", tmp_path / "raw", tmp_path / "out", "cf")
    out = tmp_path / "out"
    base, final, collab = (np.load(out / f) for f in ("embeddings_base.npy", "embeddings.npy", "collaborative.npy"))
    assert collab.shape == (n, 16) and final.shape == (n, base.shape[1] + 16), report
    assert report["finetune_skipped"] == "only 0 co-engagement pairs" and report["collaborative_dim"] == 16
    # the content part is the (here not fine-tuned) base vector at weight sqrt(0.75), the rest SASRec's at sqrt(0.25)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    assert np.allclose(final[:, :base.shape[1]], np.sqrt(0.75) * unit, atol=1e-5)
    assert np.allclose(final[:, base.shape[1]:], np.sqrt(0.25) * collab / np.linalg.norm(collab, axis=1, keepdims=True),
                       atol=1e-5)
