"""Stage embed-items: the validated catalog -> one vector per item, fine-tuned on co-engagement pairs.

Reads validated/items.parquet, pages/pairs (from sessionization, train sessions only) and the ingest
folder (item images; the simulator's ground_truth.npz when present). Writes into `out_dir`:
embeddings.npy (final, L2-normalised, row i = item_ids[i]), embeddings_base.npy (before fine-tuning),
item_ids.npy, report.json, collaborative.npy (with embed.collaborative_weight > 0: the SASRec item vectors fused
into embeddings.npy), and the fine-tuned state: head.safetensors (projection weight and per-item
residuals of the chosen epoch; embed.finetune.target=head) or encoder/ (the fine-tuned text encoder,
save_pretrained; target=encoder).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from genrec import stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data import tables
from genrec.data.io import ingest_files, iter_split_pages, read_table
from genrec.data.schema import ITEMS_FILE
from genrec.embed.encoders import ImageEncoder, TextEncoder, VLMEncoder, fuse, is_vlm
from genrec.embed.encoder_finetune import finetune_encoder
from genrec.embed.finetune import FinetuneResult, finetune_head
from genrec.embed.item_text import item_text
from genrec.embed.sequence_vectors import fuse_collaborative, sasrec_item_vectors
from genrec.errors import ConfigError, InputDataError


def _load_pairs(pages_dir: Path, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not tables.exists(pages_dir, "pairs"):
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    table = read_table(pages_dir, "pairs", "run sessionize first").to_pandas()
    row = {int(i): r for r, i in enumerate(item_ids)}
    a = table["item_a"].map(row)
    b = table["item_b"].map(row)
    ok = a.notna() & b.notna()
    return np.stack([a[ok].astype(np.int64), b[ok].astype(np.int64)], axis=1), table.loc[ok, "n_sessions"].to_numpy(float)


def _precision(cfg: PipelineConfig):
    """bf16 autocast of the encoders' forward passes when embed.precision is bf16 (the encoders run on the CPU);
    their outputs are float32 either way."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.embed.precision == "bf16")


def _encode_vlm(cfg: PipelineConfig, texts: list[str], image_paths: list[Path | None], out: Path) -> tuple[np.ndarray, int]:
    """A vision-language model embeds image and text together, in chunks, into a memory-mapped file."""
    from PIL import Image

    e = cfg.embed
    if e.image_model:
        raise ConfigError(f"embed.text_model {e.text_model} is a vision-language model that embeds images itself: "
                          "leave embed.image_model empty")
    vlm = VLMEncoder(e.text_model, e.max_length)
    emb = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(texts), vlm.dim))
    with tqdm(total=len(texts), desc="embed items (VLM)", unit="item") as bar, _precision(cfg):
        for lo in range(0, len(texts), e.chunk_size):
            hi = min(len(texts), lo + e.chunk_size)
            for b in range(lo, hi, e.batch_size):
                sl = slice(b, min(hi, b + e.batch_size))
                emb[sl] = vlm.encode(texts[sl], [Image.open(p) if p is not None else None for p in image_paths[sl]])
                bar.update(sl.stop - sl.start)
            emb.flush()
    return np.asarray(emb), sum(p is not None for p in image_paths)


def _encode(cfg: PipelineConfig, texts: list[str], image_paths: list[Path | None], out: Path,
            text_enc: TextEncoder | None = None) -> tuple[np.ndarray, int]:
    """Encode in chunks into a memory-mapped file; returns (embeddings, items with an image).
    `text_enc`: an already loaded (e.g. fine-tuned) text encoder; None loads the configured one."""
    from PIL import Image

    e = cfg.embed
    if is_vlm(e.text_model):
        return _encode_vlm(cfg, texts, image_paths, out)
    text_enc = text_enc or TextEncoder(e.text_model or None, e.max_length)
    img_enc = ImageEncoder(e.image_model) if e.image_model else None
    has_image = np.array([p is not None for p in image_paths]) if img_enc else np.zeros(len(texts), dtype=bool)
    probe = fuse(text_enc.encode(["probe"]), img_enc.encode([Image.new("RGB", (8, 8))]) if img_enc else None,
                 np.array([True]), e.fusion, e.image_weight)
    emb = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(texts), probe.shape[1]))
    bar = tqdm(total=len(texts), desc="embed items", unit="item")
    for lo in range(0, len(texts), e.chunk_size):
        hi = min(len(texts), lo + e.chunk_size)
        # Batches of similar length pad less: 1.5x faster on the demo catalog, same vectors (masked pooling).
        order = lo + np.argsort([len(t) for t in texts[lo:hi]], kind="stable")
        for b in range(0, len(order), e.batch_size):
            idx = order[b:b + e.batch_size]
            with _precision(cfg):
                t = text_enc.encode([texts[i] for i in idx])
                img = None
                if img_enc is not None:
                    img = np.zeros((t.shape[0], img_enc.dim), dtype=np.float32)
                    rows = [k for k, i in enumerate(idx) if image_paths[i] is not None]
                    if rows:
                        img[rows] = img_enc.encode([Image.open(image_paths[idx[k]]) for k in rows])
            emb[idx] = fuse(t, img, has_image[idx], e.fusion, e.image_weight)
            bar.update(len(idx))
        emb.flush()
    bar.close()
    return np.asarray(emb), int(has_image.sum())


def _truth_correlation(raw_dir: Path, item_ids: np.ndarray, embs: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    """Simulator only: Spearman correlation of embedding similarity with the true latent item similarity."""
    from scipy.stats import spearmanr

    from genrec.data.simulator import load_truth

    truth = load_truth(raw_dir)
    if truth is None:
        return {}
    v = truth.item_vec[item_ids]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(item_ids), (2, 20_000))
    true_sim = (v[a] * v[b]).sum(1)
    return {f"true_sim_spearman_{k}": float(spearmanr((e[a] * e[b]).sum(1), true_sim).statistic) for k, e in embs.items()}


def _finetune_figures(ft: FinetuneResult) -> dict:
    return {"recall_at10_before": ft.recall_before, "recall_at10_after": ft.recall_after,
            "n_train_pairs": ft.n_train_pairs, "n_heldout_pairs": ft.n_heldout_pairs,
            "finetune_final_loss": ft.losses[-1] if ft.losses else float("nan")}


def _fuse_sequence_vectors(cfg: PipelineConfig, pages_dir: Path, item_ids: np.ndarray, content: np.ndarray,
                           out_dir: Path, report: dict) -> np.ndarray:
    """Content vectors fused with SASRec item vectors learned on the training pages (collaborative.npy keeps
    the latter)."""
    started = time.time()
    train = iter_split_pages(pages_dir, "train")  # streamed: memory holds a sequence per user, not the pages
    vectors = sasrec_item_vectors(train, item_ids, cfg.eval.sasrec, cfg.embed.collaborative_epochs,
                                  cfg.model.max_history, cfg.run.seed)
    np.save(out_dir / "collaborative.npy", vectors)
    report.update({"collaborative_weight": cfg.embed.collaborative_weight, "collaborative_dim": int(vectors.shape[1]),
                   "collaborative_s": round(time.time() - started, 1)})
    return fuse_collaborative(content, vectors, cfg.embed.collaborative_weight)


def run_embed_items(cfg: PipelineConfig, validated_dir: str | Path, pages_dir: str | Path, raw_dir: str | Path,
                    out_dir: str | Path, pipeline_run_id: str) -> dict:
    """Embed every item of the validated catalog; fine-tune on co-engagement pairs; write the vectors."""
    validated_dir, pages_dir, raw_dir, out_dir = map(Path, (validated_dir, pages_dir, raw_dir, out_dir))
    out_dir = stage_outputs.begin(out_dir, "embed-items", pipeline_run_id, {"validated": validated_dir, "pages": pages_dir, "raw": raw_dir})
    with tracking.stage_run(cfg, "embed-items", pipeline_run_id) as track:
        track.params({"embed": cfg.embed.model_dump(mode="json")})
        items = read_table(validated_dir, ITEMS_FILE, "run validate-events first").to_pandas()
        if items.empty:
            raise InputDataError(f"{validated_dir / ITEMS_FILE}: the catalog is empty; nothing to embed")
        texts = [item_text(r.title, r.brand, r.category, r.description) for r in items.itertuples()]
        files = ingest_files(raw_dir)  # image_path is relative to where ingest wrote the images
        image_paths = [files / p if isinstance(p, str) and (files / p).is_file() else None for p in items["image_path"]]
        sees_images = bool(cfg.embed.image_model) or is_vlm(cfg.embed.text_model)
        blank = [int(i) for i, t, p in zip(items["item_id"], texts, image_paths) if not t and (p is None or not sees_images)]
        if blank:
            raise InputDataError(f"{len(blank)} items have no text (title, brand, category, description) and no image to "
                                 f"embed them from; first item ids: {blank[:10]}")
        item_ids = items["item_id"].to_numpy(np.int64)
        ft_cfg = cfg.embed.finetune
        tune_encoder = ft_cfg.enabled and ft_cfg.target == "encoder"
        if tune_encoder and is_vlm(cfg.embed.text_model):
            raise ConfigError("embed.finetune.target=encoder trains text encoders and CLIP text towers; "
                              f"{cfg.embed.text_model} is a vision-language model: use embed.finetune.target=head")
        text_enc = TextEncoder(cfg.embed.text_model or None, cfg.embed.max_length) if tune_encoder else None
        base, n_img = _encode(cfg, texts, image_paths, out_dir / "embeddings_base.npy", text_enc)
        bad = ~np.isfinite(base).all(axis=1)
        if bad.any():
            raise InputDataError(f"the encoder produced NaN or infinite vectors for {int(bad.sum())} items "
                                 f"(first ids: {item_ids[bad][:10].tolist()}); check the checkpoint at "
                                 f"{cfg.embed.text_model or 'the bundled MiniLM'}")
        pairs, weights = _load_pairs(pages_dir, item_ids)
        report = {"n_items": len(item_ids), "dim": int(base.shape[1]), "n_with_image": n_img, "n_pairs": len(pairs)}
        final = base
        if tune_encoder and len(pairs) >= 10:
            scratch = out_dir / "embeddings_tuning.npy"
            ft = finetune_encoder(text_enc, texts, base, pairs, weights, ft_cfg, cfg.run.seed,
                                  lambda enc: _encode(cfg, texts, image_paths, scratch, enc)[0].copy())
            scratch.unlink(missing_ok=True)
            final = ft.embeddings
            # The chosen epoch's encoder, loadable as embed.text_model by a later run (safetensors).
            text_enc.model.save_pretrained(out_dir / "encoder")
            text_enc.tokenizer.save_pretrained(out_dir / "encoder")
            report.update(_finetune_figures(ft))
        elif ft_cfg.enabled and len(pairs) >= 10:
            ft = finetune_head(base, pairs, weights, ft_cfg, cfg.run.seed)
            final = ft.embeddings
            from safetensors.numpy import save_file

            # Everything needed to rebuild embeddings.npy from embeddings_base.npy (the chosen epoch's state).
            tensors = {"weight": ft.head_weight} | ({"residual": ft.residual} if ft.residual is not None else {})
            save_file(tensors, str(out_dir / "head.safetensors"))
            report.update(_finetune_figures(ft))
        elif ft_cfg.enabled:
            report["finetune_skipped"] = f"only {len(pairs)} co-engagement pairs"
        if cfg.embed.collaborative_weight > 0:
            final = _fuse_sequence_vectors(cfg, pages_dir, item_ids, final, out_dir, report)
        np.save(out_dir / "embeddings.npy", final)
        np.save(out_dir / "item_ids.npy", item_ids)
        report.update(_truth_correlation(raw_dir, item_ids, {"before": base, "after": final}, cfg.run.seed))
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        track.metrics({k: v for k, v in report.items() if isinstance(v, (int, float))})
        track.json(report, "embed/report.json")
        track.dataset(out_dir / "embeddings.npy", "item_embeddings", "output")
    stage_outputs.complete(out_dir)
    return report
