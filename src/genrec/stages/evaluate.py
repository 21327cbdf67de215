"""Stage evaluate: the model and the test pages -> HR@K, NDCG@K, Recall@K, HaR and R@K, beside baselines.

Reads the model's folder (align's or train-sft's model/), validate-pages' folder (pages/, both splits:
baselines train on the train split) and assign-sids' folder; optionally the SFT model (to show what
alignment changed), the reward model (R@K) and ingest's folder (the simulator's true preference).
Writes into `out_dir`: metrics.json, metrics.csv, metrics.md and report.json.

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

from genrec import stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data.io import read_split_pages
from genrec.errors import ConfigError, InputDataError
from genrec.eval.baselines import popularity_ranking, sasrec_rank, train_sasrec, user_sequences
from genrec.eval.bert4rec import bert4rec_rank, train_bert4rec
from genrec.eval.metrics import hallucination_rate, ranking_metrics
from genrec.model.beam_search import PrefixMasks, beam_search
from genrec.model.genrec_model import GenRecModel
from genrec.model.samples import page_items
from genrec.model.vocab import SidMap


def test_requests(pages: pd.DataFrame, truth_types: list[str], max_history: int, max_requests: int, seed: int):
    """(histories, truths, counts, scored pages) for the scorable test pages."""
    histories, truths, kept, counts = [], [], [], {"test_pages": len(pages), "no_history": 0, "no_truth": 0}
    for n, page in enumerate(pages.itertuples(index=False)):
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
            kept.append(n)
    if max_requests and len(histories) > max_requests:
        keep = np.sort(np.random.default_rng(seed).choice(len(histories), max_requests, replace=False))
        histories, truths, kept = [histories[i] for i in keep], [truths[i] for i in keep], [kept[i] for i in keep]
    counts["requests"] = len(histories)
    return histories, truths, counts, pages.iloc[kept].reset_index(drop=True)


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


def _load_model(model_dir: Path, sid_map: SidMap) -> GenRecModel:
    model = GenRecModel.load(model_dir)
    sid_map.require_fingerprint(model.sid_fingerprint, f"the model in {model_dir}")
    return model


def run_evaluate(cfg: PipelineConfig, model_dir: str | Path, pages_dir: str | Path, sids_dir: str | Path,
                 out_dir: str | Path, pipeline_run_id: str, *, sft_dir: str | Path | None = None,
                 reward_dir: str | Path | None = None, raw_dir: str | Path | None = None) -> dict:
    """Score the model and the baselines on the test requests; returns {method: {metric: value}}.

    Optional: `sft_dir`, the SFT model the evaluated one was aligned from (row genrec_sft); `reward_dir`,
    the reward model (R@K from r_pref for every method); `raw_dir`, ingest's folder (R@K from the
    simulator's true preference when ground_truth.npz is there)."""
    model_dir, pages_dir, sids_dir, out_dir = map(Path, (model_dir, pages_dir, sids_dir, out_dir))
    stage_outputs.begin(out_dir, "evaluate", pipeline_run_id, {"model": model_dir, "pages": pages_dir, "sids": sids_dir, "sft": sft_dir,
                                                        "reward": reward_dir, "raw": raw_dir})
    e = cfg.eval
    if e.beam_width < max(e.ks):
        raise ConfigError(f"eval.beam_width={e.beam_width} is below the largest K in eval.ks={e.ks}")
    with tracking.stage_run(cfg, "evaluate", pipeline_run_id) as track:
        track.params({"eval": e.model_dump(mode="json")})
        sid_map = SidMap.load(sids_dir)
        models = {"genrec": _load_model(model_dir, sid_map)}
        if sft_dir:
            models["genrec_sft"] = _load_model(Path(sft_dir), sid_map)
        histories, truths, counts, scored = test_requests(read_split_pages(pages_dir, "test"), e.truth_types,
                                                          cfg.model.max_history, e.max_requests, cfg.run.seed)
        if not histories:
            raise InputDataError(f"{pages_dir / 'pages'}: no test page has both a history and a true item of "
                                 f"{e.truth_types} ({counts})")
        rows: dict[str, dict[str, float]] = {}
        rankings: dict[str, np.ndarray] = {}
        for name, model in models.items():
            rankings[name] = generate(model, sid_map, histories, e.beam_width, True, e.batch_size)
            free = generate(model, sid_map, histories, e.beam_width, False, e.batch_size)
            rows[name] = ranking_metrics(rankings[name], truths, e.ks) | {"har": hallucination_rate(free)}
        train = read_split_pages(pages_dir, "train") if e.baselines else None
        if "popularity" in e.baselines:
            rankings["popularity"] = np.tile(popularity_ranking(train, e.beam_width), (len(histories), 1))
            rows["popularity"] = ranking_metrics(rankings["popularity"], truths, e.ks) | {"har": 0.0}
        for name in ("sasrec", "bert4rec"):
            if name in e.baselines:
                rankings[name] = _item_sequence_ranking(cfg, name, train, sid_map, histories)
                rows[name] = ranking_metrics(rankings[name], truths, e.ks) | {"har": 0.0}
        _add_reward_metrics(cfg, rows, rankings, scored, sid_map, reward_dir, raw_dir)
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
    stage_outputs.complete(out_dir)
    return rows


def _add_reward_metrics(cfg: PipelineConfig, rows: dict, rankings: dict, scored: pd.DataFrame, sid_map: SidMap,
                        reward_dir, raw_dir) -> None:
    """R@K by the reward model (r@K) and, on the simulator, by the true preference (true_r@K), for every method."""
    from genrec.data.simulator import days_since_start, load_truth
    from genrec.eval.reward_metrics import reward_at_k, reward_model_values, true_preference_values
    from genrec.reward.sim_model import SimRewardModel

    if reward_dir:
        reward = SimRewardModel.load(reward_dir)
        sid_map.require_fingerprint(reward.sid_fingerprint, f"the reward model in {reward_dir}")
        long_histories = [[int(i) for i in h] for h in scored["history_items"]]
        for name, ranked in rankings.items():
            values = reward_model_values(reward, sid_map, long_histories, ranked, cfg.reward.max_history)
            rows[name].update(reward_at_k(values, cfg.eval.ks))
    truth = load_truth(raw_dir) if cfg.source.kind == "simulator" else None
    if truth is not None:
        days = days_since_start(scored["page_start"], cfg.simulator.start_date)
        users = scored["user_id"].to_numpy(np.int64)
        for name, ranked in rankings.items():
            values = true_preference_values(truth, users, days, ranked)
            rows[name].update({f"true_{k}": v for k, v in reward_at_k(values, cfg.eval.ks).items()})


def _item_sequence_ranking(cfg: PipelineConfig, name: str, train: pd.DataFrame, sid_map: SidMap,
                           histories) -> np.ndarray:
    """Train SASRec or BERT4Rec on the users' training sequences; (N, beam_width) item ids ranked over the full
    catalog."""
    row_of = {int(i): r + 1 for r, i in enumerate(sid_map.item_ids)}  # 1-based rows; 0 pads
    sequences = user_sequences(train, row_of)
    if not sequences:
        raise InputDataError(f"no user has two positive interactions in the training pages: {name} cannot be trained")
    max_len, n_items, seed = cfg.model.max_history, len(sid_map.item_ids), cfg.run.seed
    rows_of_histories = [[row_of[i] for i in h] for h in histories]
    if name == "sasrec":
        model = train_sasrec(sequences, n_items, cfg.eval.sasrec, max_len, seed)
        rows = sasrec_rank(model, rows_of_histories, max_len, cfg.eval.beam_width)
    else:
        model = train_bert4rec(sequences, n_items, cfg.eval.bert4rec, max_len, seed)
        rows = bert4rec_rank(model, rows_of_histories, max_len, cfg.eval.beam_width)
    return sid_map.item_ids[rows - 1]


def _markdown(table: pd.DataFrame, counts: dict, cfg: PipelineConfig) -> str:
    cols = list(table.columns)
    lines = ["# evaluate", "",
             f"{counts['requests']} test requests (of {counts['test_pages']} test pages; {counts['no_history']} without "
             f"history, {counts['no_truth']} without a true item of {cfg.eval.truth_types}). Beam width "
             f"{cfg.eval.beam_width}. GenRec rows rank by trie-constrained beam search; their `har` is the share of "
             "SIDs that are no item when the same beams run without the trie. `r@K`: the highest reward-model "
             "score among the top K (mean over requests); `true_r@K`: the same with the simulator's true preference.",
             "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
