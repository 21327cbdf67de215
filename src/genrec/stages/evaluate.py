"""Stage evaluate: the trained model and the test pages -> HR@K, NDCG@K, Recall@K and HaR, beside baselines.

Reads train-sft's folder (model/), validate-pages' folder (pages/, both splits: baselines train on the
train split) and assign-sids' folder. Writes into `out_dir`: metrics.json, metrics.csv, metrics.md and
report.json.

Requests: the test pages with a history and at least one true item (eval.truth_types); the others are
counted, not scored. GenRec ranks by trie-constrained beam search (every output is an item); the same
requests decoded without the trie give the hallucination rate. Baselines rank the full catalog.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from genrec import tracking
from genrec.config import PipelineConfig
from genrec.data.io import read_split_pages
from genrec.errors import ConfigError, InputDataError
from genrec.eval.baselines import popularity_ranking, sasrec_rank, train_sasrec, user_sequences
from genrec.eval.metrics import hallucination_rate, ranking_metrics
from genrec.model.beam_search import PrefixMasks, beam_search
from genrec.model.genrec_model import GenRecModel
from genrec.model.samples import page_items
from genrec.model.vocab import SidMap


def test_requests(pages: pd.DataFrame, truth_types: list[str], max_history: int, max_requests: int, seed: int):
    """(histories, truths, counts) for the scorable test pages."""
    histories, truths, counts = [], [], {"test_pages": len(pages), "no_history": 0, "no_truth": 0}
    for page in pages.itertuples(index=False):
        page = page._asdict()
        history = [int(i) for i in page["history_items"]][-max_history:]
        truth = set(page_items(page, truth_types))
        if not history:
            counts["no_history"] += 1
        elif not truth:
            counts["no_truth"] += 1
        else:
            histories.append(history)
            truths.append(truth)
    if max_requests and len(histories) > max_requests:
        keep = np.sort(np.random.default_rng(seed).choice(len(histories), max_requests, replace=False))
        histories, truths = [histories[i] for i in keep], [truths[i] for i in keep]
    counts["requests"] = len(histories)
    return histories, truths, counts


def generate(model: GenRecModel, sid_map: SidMap, histories: list[list[int]], beam: int, constrained: bool,
             batch_size: int) -> np.ndarray:
    """(N, beam) item ids by beam search, -1 where the generated SID is no item."""
    masks = PrefixMasks(sid_map.trie()) if constrained else None
    out = []
    desc = "beam search" + (" (trie)" if constrained else " (free)")
    for lo in tqdm(range(0, len(histories), batch_size), desc=desc, unit="batch"):
        codes = [sid_map.item_codes(h, "a test history") for h in histories[lo:lo + batch_size]]
        out.append(beam_search(model, codes, sid_map, beam, constrained, masks).items)
    return np.concatenate(out)


def metrics_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method").reset_index()


def run_evaluate(cfg: PipelineConfig, model_dir: str | Path, pages_dir: str | Path, sids_dir: str | Path,
                 out_dir: str | Path, pipeline_run_id: str) -> dict:
    """Score the model and the baselines on the test requests; returns {method: {metric: value}}."""
    model_dir, pages_dir, sids_dir, out_dir = map(Path, (model_dir, pages_dir, sids_dir, out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    e = cfg.eval
    if e.beam_width < max(e.ks):
        raise ConfigError(f"eval.beam_width={e.beam_width} is below the largest K in eval.ks={e.ks}")
    with tracking.stage_run(cfg, "evaluate", pipeline_run_id) as track:
        track.params({"eval": e.model_dump(mode="json")})
        sid_map = SidMap.load(sids_dir)
        model = GenRecModel.load(model_dir / "model" if (model_dir / "model").is_dir() else model_dir)
        if model.sid_fingerprint != sid_map.fingerprint():
            raise InputDataError(f"the model in {model_dir} was trained on other semantic IDs than {sid_map.source} "
                                 f"(fingerprint {model.sid_fingerprint} vs {sid_map.fingerprint()}); evaluate with the "
                                 "SID table it was trained on, or retrain")
        histories, truths, counts = test_requests(read_split_pages(pages_dir, "test"), e.truth_types, cfg.model.max_history,
                                                  e.max_requests, cfg.run.seed)
        if not histories:
            raise InputDataError(f"{pages_dir / 'pages'}: no test page has both a history and a true item of "
                                 f"{e.truth_types} ({counts})")
        rows: dict[str, dict[str, float]] = {}
        ranked = generate(model, sid_map, histories, e.beam_width, True, e.batch_size)
        rows["genrec"] = ranking_metrics(ranked, truths, e.ks) | {"har": hallucination_rate(ranked)}
        free = generate(model, sid_map, histories, e.beam_width, False, e.batch_size)
        rows["genrec_unconstrained"] = ranking_metrics(free, truths, e.ks) | {"har": hallucination_rate(free)}
        train = read_split_pages(pages_dir, "train") if e.baselines else None
        if "popularity" in e.baselines:
            top = popularity_ranking(train, e.beam_width)
            rows["popularity"] = ranking_metrics(np.tile(top, (len(histories), 1)), truths, e.ks) | {"har": 0.0}
        if "sasrec" in e.baselines:
            rows["sasrec"] = _sasrec_metrics(cfg, train, sid_map, histories, truths) | {"har": 0.0}
        table = metrics_table(rows)
        table.to_csv(out_dir / "metrics.csv", index=False)
        (out_dir / "metrics.md").write_text(_markdown(table, counts, cfg))
        (out_dir / "metrics.json").write_text(json.dumps(rows, indent=2))
        (out_dir / "report.json").write_text(json.dumps({"requests": counts, "metrics": rows}, indent=2))
        # MLflow metric names may not hold "@": hr@10 is logged as <method>/hr_at_10.
        track.metrics({f"{m}/{k.replace('@', '_at_')}": v for m, r in rows.items() for k, v in r.items()})
        track.metrics({f"requests/{k}": v for k, v in counts.items()})
        track.artifact(out_dir / "metrics.md", "eval")
        track.artifact(out_dir / "metrics.csv", "eval")
        track.json(rows, "eval/metrics.json")
    return rows


def _sasrec_metrics(cfg: PipelineConfig, train: pd.DataFrame, sid_map: SidMap, histories, truths) -> dict[str, float]:
    """Train SASRec on the users' training sequences and rank the full catalog for each request."""
    row_of = {int(i): r + 1 for r, i in enumerate(sid_map.item_ids)}  # 1-based rows; 0 pads
    sequences = user_sequences(train, row_of)
    if not sequences:
        raise InputDataError("no user has two positive interactions in the training pages: SASRec cannot be trained")
    max_len = cfg.model.max_history
    model = train_sasrec(sequences, len(sid_map.item_ids), cfg.eval.sasrec, max_len, cfg.run.seed)
    rows = sasrec_rank(model, [[row_of[i] for i in h] for h in histories], max_len, cfg.eval.beam_width)
    return ranking_metrics(sid_map.item_ids[rows - 1], truths, cfg.eval.ks)


def _markdown(table: pd.DataFrame, counts: dict, cfg: PipelineConfig) -> str:
    cols = list(table.columns)
    lines = ["# evaluate", "",
             f"{counts['requests']} test requests (of {counts['test_pages']} test pages; {counts['no_history']} without "
             f"history, {counts['no_truth']} without a true item of {cfg.eval.truth_types}). Beam width "
             f"{cfg.eval.beam_width}. `genrec`: trie-constrained beam search; `genrec_unconstrained`: the same without "
             "the trie (HaR = share of generated SIDs that are no item).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
