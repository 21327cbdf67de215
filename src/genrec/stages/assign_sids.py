"""Stage assign-sids: item embeddings -> RQ-KMeans codebooks, a unique semantic ID per item, the prefix trie.

Reads embed-items' folder (embeddings.npy, item_ids.npy) and the validated catalog (categories, for the
report). Writes into `out_dir`: codebooks.npz, sid_table.parquet (item_id, s1..sL), trie.npz, report.json,
utilisation.png and the Great Expectations check of the SID table (gx/ with Data Docs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec import plots, stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data.io import read_table
from genrec.data.schema import ITEMS_FILE
from genrec.errors import InputDataError, ValidationFailed
from genrec.sid.report import sid_quality, utilisation_figure
from genrec.sid.rqkmeans import (RQCodebooks, auto_codebook_size, check_embeddings, collision_rate, encode, fit_rq_kmeans,
                                 resolve_collisions)
from genrec.sid.trie import SidTrie
from genrec.validation import checks as C
from genrec.validation.gate import gate_reasons
from genrec.validation.runner import GxProject, TableValidation, check_table


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputDataError(f"{path} not found: run embed-items first")
    return np.load(path, allow_pickle=False)


def residual_inputs(x: np.ndarray, codes: np.ndarray, books: RQCodebooks) -> list[np.ndarray]:
    """The residual each level quantised, for the given (final) codes."""
    out, r = [], x.copy()
    for level, cent in enumerate(books.centroids):
        out.append(r.copy())
        r -= cent[codes[:, level]]
    return out


def run_assign_sids(cfg: PipelineConfig, embeddings_dir: str | Path, validated_dir: str | Path, out_dir: str | Path,
                    pipeline_run_id: str) -> dict:
    """Fit RQ-KMeans, give every item a unique SID, build the trie, check and report."""
    embeddings_dir, validated_dir, out_dir = map(Path, (embeddings_dir, validated_dir, out_dir))
    out_dir = stage_outputs.begin(out_dir, "assign-sids", pipeline_run_id, {"embeddings": embeddings_dir, "validated": validated_dir})
    with tracking.stage_run(cfg, "assign-sids", pipeline_run_id) as track:
        track.params({"sid": cfg.sid.model_dump(mode="json")})
        item_ids = _load(embeddings_dir / "item_ids.npy")
        x = check_embeddings(_load(embeddings_dir / "embeddings.npy"), item_ids)
        if cfg.sid.normalize:
            x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
        k = cfg.sid.codebook_size or auto_codebook_size(len(x), cfg.sid.levels)
        sizes = [k] * cfg.sid.levels
        books = fit_rq_kmeans(x, sizes, cfg.sid.kmeans_iters, cfg.run.seed, cfg.sid.kmeans_init_sample)
        greedy, inputs = encode(x, books)
        codes, moved = resolve_collisions(greedy, inputs, books)
        items = read_table(validated_dir, ITEMS_FILE, "run validate-events first").to_pandas().set_index("item_id")
        categories = items["category"].reindex(item_ids).tolist()
        report = {"n_items": len(x), "dim": int(x.shape[1]), "levels": cfg.sid.levels, "codebook_size": k,
                  "collision_rate_before": collision_rate(greedy), "collision_rate_after": collision_rate(codes),
                  "items_moved": moved, "share_moved": moved / len(x),
                  **sid_quality(x, codes, residual_inputs(x, codes, books), books, categories)}

        np.savez_compressed(out_dir / "codebooks.npz", **{f"level{i + 1}": c for i, c in enumerate(books.centroids)})
        cols = {f"s{i + 1}": pa.array(codes[:, i].astype(np.int32)) for i in range(codes.shape[1])}
        table = pa.table({"item_id": pa.array(item_ids.astype(np.int64)), **cols})
        pq.write_table(table, out_dir / "sid_table.parquet")
        SidTrie(codes, sizes).save(out_dir / "trie.npz")

        project = GxProject(out_dir)
        rep = TableValidation("sid_table", len(x))
        check_table(project, table.to_pandas(), "sid_table", C.sid_checks(len(items), sizes), rep, pipeline_run_id)
        reasons = gate_reasons([rep], 0.0)
        project.publish_docs(stopped=bool(reasons))
        report["sid_table_valid"] = not reasons
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        (out_dir / "report.md").write_text("# assign-sids\n\n| figure | value |\n|---|---|\n" + "".join(
            f"| {kk} | {v:.4g} |\n" if isinstance(v, float) else f"| {kk} | {v} |\n" for kk, v in report.items()))

        fig = utilisation_figure(codes, sizes)
        fig.savefig(out_dir / "utilisation.png", dpi=80)
        track.figure(fig, "plots/sid_utilisation.png")
        plots.close(fig)
        track.metrics({kk: v for kk, v in report.items() if isinstance(v, (int, float))})
        track.json(report, "sid/report.json")
        track.dataset(out_dir / "sid_table.parquet", "sid_table", "output")
        if project.docs_index.is_file():
            track.artifact(project.docs_index.parent, "data_docs")
        if reasons:
            raise ValidationFailed("assign-sids: the SID table failed its checks:\n  " + "\n  ".join(reasons))
    stage_outputs.complete(out_dir)
    return report
