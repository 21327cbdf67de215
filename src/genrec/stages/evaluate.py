"""Stage evaluate: the model and the test pages -> HR@K, NDCG@K, Recall@K, HaR and R@K, beside baselines.

Reads the model's folder (align's or train-sft's model/), validate-pages' folder (pages/: baselines train
on the train split) and assign-sids' folder; optionally the SFT model (to show what
alignment changed), the reward model (R@K) and ingest's folder (the simulator's true preference).
Writes into `out_dir`: metrics.json, metrics_valid.json, metrics.csv, metrics.md, intervals.json, paired.json,
topk.parquet and report.json.

Requests: the test pages with a history and at least one true item (eval.truth_types); the others are
counted, not scored. At most eval.max_requests of them, a seeded sample drawn while the split streams past
(genrec.eval.requests): the test and validation days are never held whole. GenRec ranks by trie-constrained
beam search (every output is an item); the same requests decoded without the trie give the hallucination rate (over
all beams and over the top beam) and free-decoding HR (`free_hr@K`: a SID that is no item is a miss), for the
GenRec row the gate judges (gate.method; the SFT row, shown for comparison, is decoded with the trie only).
Baselines rank the full catalog. The validation requests (metrics_valid.json, for the gate and the baselines'
epochs) are scored for the baselines and for the GenRec row the gate judges (gate.method). intervals.json holds a
95% bootstrap interval (over requests) of every method's HR@K and NDCG@K; paired.json each GenRec row minus each
baseline on the same requests, with a paired bootstrap interval. topk.parquet holds every method's ranked list per
split and request (page_id, user_id, true_items, ranked_items, scores; GenRec's free decoding as method
`<name>_free`), so anyone can recompute the metrics from it.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from genrec import stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data.io import iter_split_pages
from genrec.errors import ConfigError, InputDataError
from genrec.eval.baselines import popularity_ranking, sasrec_rank, train_sasrec, user_sequences
from genrec.eval.bert4rec import bert4rec_rank, train_bert4rec
from genrec.eval.metrics import bootstrap_interval, hallucination_rate, per_request_metrics, ranking_metrics
from genrec.eval.requests import sample_requests
from genrec.model.beam_search import PrefixMasks, beam_search
from genrec.model.genrec_model import GenRecModel
from genrec.model.vocab import SidMap


def generate(model: GenRecModel, sid_map: SidMap, histories: list[list[int]], beam: int, constrained: bool,
             batch_size: int, use_rank_head: bool = True, item_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(N, beam) item ids by beam search, -1 where the generated SID is no item, and their scores (summed
    log-probabilities; with a rank head, summed log refined scores unless `use_rank_head` is False; plus
    `item_weight` times the item softmax's log-probability when > 0)."""
    masks = PrefixMasks(sid_map.trie()) if constrained else None
    items, scores = [], []
    desc = "beam search" + (" (trie)" if constrained else " (free)")
    for lo in tqdm(range(0, len(histories), batch_size), desc=desc, unit="batch"):
        codes = [sid_map.item_codes(h, "a test history") for h in histories[lo:lo + batch_size]]
        out = beam_search(model, codes, sid_map, beam, constrained, masks, use_rank_head, item_weight)
        items.append(out.items)
        scores.append(out.scores)
    return np.concatenate(items), np.concatenate(scores)


def intervals(rankings: dict[str, np.ndarray], truths: list[set[int]], ks: list[int], seed: int) -> dict:
    """{method: {metric: [low, high]}}: 95% bootstrap intervals of HR@K and NDCG@K over the requests."""
    out = {}
    for name, ranked in rankings.items():
        out[name] = {}
        for k in ks:
            per = per_request_metrics(ranked, truths, k)
            out[name] |= {m: list(bootstrap_interval(per[m], seed)) for m in (f"hr@{k}", f"ndcg@{k}")}
    return out


def paired_differences(rankings: dict[str, np.ndarray], truths: list[set[int]], ks: list[int], seed: int,
                       pairs: list[tuple[str, str]]) -> dict:
    """{"a - b": {metric: [mean, low, high]}}: method a minus method b on the same requests, HR@K and NDCG@K,
    with a 95% paired bootstrap interval (requests resampled jointly, so what both get right cancels out)."""
    out = {}
    for a, b in pairs:
        out[f"{a} - {b}"] = {}
        for k in ks:
            per_a, per_b = per_request_metrics(rankings[a], truths, k), per_request_metrics(rankings[b], truths, k)
            for m in (f"hr@{k}", f"ndcg@{k}"):
                diff = per_a[m] - per_b[m]
                out[f"{a} - {b}"][m] = [float(diff.mean()), *bootstrap_interval(diff, seed)]
    return out


def topk_table(rankings: dict[str, np.ndarray], scores: dict[str, np.ndarray], scored: pd.DataFrame,
               truths: list[set[int]]) -> pd.DataFrame:
    """One row per method and request: the request's page and user, its true items, the ranked items and scores."""
    frames = []
    for name, ranked in rankings.items():
        frames.append(pd.DataFrame({
            "method": name, "request": np.arange(len(ranked)), "page_id": scored["page_id"].to_numpy(),
            "user_id": scored["user_id"].to_numpy(np.int64), "true_items": [sorted(t) for t in truths],
            "ranked_items": list(ranked.astype(np.int64)), "scores": list(scores[name].astype(np.float64))}))
    return pd.concat(frames, ignore_index=True)


def metrics_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method").reset_index()


def _load_model(model_dir: Path, sid_map: SidMap) -> GenRecModel:
    model = GenRecModel.load(model_dir)
    sid_map.require_fingerprint(model.sid_fingerprint, f"the model in {model_dir}")
    return model


def run_evaluate(cfg: PipelineConfig, model_dir: str | Path, pages_dir: str | Path, sids_dir: str | Path,
                 out_dir: str | Path, pipeline_run_id: str, *, sft_dir: str | Path | None = None,
                 reward_dir: str | Path | None = None, raw_dir: str | Path | None = None) -> dict:
    """Score the model and the baselines on the test requests (and the validation requests, for the gate and
    the baselines' epoch); returns the test table {method: {metric: value}}.

    Optional: `sft_dir`, the SFT model the evaluated one was aligned from (row genrec_sft); `reward_dir`,
    the reward model (R@K from r_pref for every method); `raw_dir`, ingest's folder (R@K from the
    simulator's true preference when ground_truth.npz is there)."""
    model_dir, pages_dir, sids_dir, out_dir = map(Path, (model_dir, pages_dir, sids_dir, out_dir))
    out_dir = stage_outputs.begin(out_dir, "evaluate", pipeline_run_id, {"model": model_dir, "pages": pages_dir, "sids": sids_dir, "sft": sft_dir,
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
        splits = {split: sample_requests(pages_dir, split, e.truth_types, cfg.model.max_history, e.max_requests,
                                         cfg.run.seed) for split in ("valid", "test")}
        if not splits["test"][0]:
            raise InputDataError(f"{pages_dir / 'pages'}: no test page has both a history and a true item of "
                                 f"{e.truth_types} ({splits['test'][2]})")
        if not splits["valid"][0]:  # sessionize.split.valid_days=0: the gate and the baselines use what they can
            del splits["valid"]
        baselines, selection = _train_baselines(cfg, pages_dir, sid_map, splits.get("valid"))
        results, frames = {}, []
        for split, (histories, truths, counts, scored) in splits.items():
            # Validation serves the gate: of the GenRec models only the one it judges is decoded there (beam search
            # is most of evaluate's time); the baselines are cheap and are what it compares with.
            scored_models = models if split == "test" else {m: v for m, v in models.items() if m == cfg.gate.method}
            rows, rankings, scores = _score(cfg, scored_models, baselines, sid_map, histories, truths,
                                            compare_rsp=split == "test")
            ranked = {m: r for m, r in rankings.items() if m in rows}  # the table's rows (not the free decodings)
            _add_reward_metrics(cfg, rows, ranked, scored, sid_map, reward_dir, raw_dir)
            spans = intervals(ranked, truths, e.ks, cfg.run.seed)
            paired = paired_differences(ranked, truths, e.ks, cfg.run.seed,
                                        [(m, b) for m in scored_models for b in baselines])
            frames.append(topk_table(rankings, scores, scored, truths).assign(split=split))
            results[split] = {"requests": counts, "metrics": rows, "intervals": spans, "paired": paired}
        topk = pd.concat(frames, ignore_index=True)
        topk.to_parquet(out_dir / "topk.parquet", index=False)
        rows, spans, counts = results["test"]["metrics"], results["test"]["intervals"], results["test"]["requests"]
        table = metrics_table(rows)
        table.to_csv(out_dir / "metrics.csv", index=False)
        (out_dir / "metrics.md").write_text(_markdown(results, selection, cfg))
        (out_dir / "metrics.json").write_text(json.dumps(rows, indent=2))
        (out_dir / "intervals.json").write_text(json.dumps(spans, indent=2))
        (out_dir / "paired.json").write_text(json.dumps({split: r["paired"] for split, r in results.items()}, indent=2))
        if "valid" in results:
            (out_dir / "metrics_valid.json").write_text(json.dumps(results["valid"]["metrics"], indent=2))
        (out_dir / "report.json").write_text(json.dumps({**results["test"], "validation": results.get("valid"),
                                                         "baseline_selection": selection}, indent=2))
        # MLflow metric names may not hold "@": hr@10 is logged as <method>/hr_at_10 (valid/<method>/... for the
        # validation split).
        for split, result in results.items():
            prefix = "" if split == "test" else "valid/"
            track.metrics({f"{prefix}{m}/{k.replace('@', '_at_')}": v for m, r in result["metrics"].items()
                           for k, v in r.items()})
            track.metrics({f"{prefix}{m}/{k.replace('@', '_at_')}_ci_{end}": v for m, r in result["intervals"].items()
                           for k, span in r.items() for end, v in zip(("low", "high"), span)})
            track.metrics({f"{prefix}requests/{k}": v for k, v in result["requests"].items()})
            # "genrec - popularity" -> genrec_minus_popularity/hr_at_10 (mean), ..._ci_low, ..._ci_high
            track.metrics({f"{prefix}{pair.replace(' - ', '_minus_')}/{k.replace('@', '_at_')}{end}": v
                           for pair, r in result["paired"].items() for k, span in r.items()
                           for end, v in zip(("", "_ci_low", "_ci_high"), span)})
        for name in ("metrics.md", "metrics.csv", "intervals.json", "paired.json", "topk.parquet"):
            track.artifact(out_dir / name, "eval")
        track.json(rows, "eval/metrics.json")
        if "valid" in results:
            track.json(results["valid"]["metrics"], "eval/metrics_valid.json")
    stage_outputs.complete(out_dir)
    return rows


def _score(cfg: PipelineConfig, models: dict[str, GenRecModel], baselines: dict, sid_map: SidMap,
           histories: list[list[int]], truths: list[set[int]], compare_rsp: bool = True):
    """(rows, rankings, scores) of every method on one split's requests; GenRec's free decoding as <name>_free; a
    model with a rank head also decoded without it as <name>_no_rsp, both with their decoding seconds (decode_s)."""
    e = cfg.eval
    rows: dict[str, dict[str, float]] = {}
    rankings: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        rankings[name], scores[name] = generate(model, sid_map, histories, e.beam_width, True, e.batch_size,
                                                item_weight=e.item_rerank_weight)
        rows[name] = ranking_metrics(rankings[name], truths, e.ks)
        if model.rank is not None and compare_rsp:  # two stages against the same model's one-stage search
            rows[name]["decode_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            one, scores[f"{name}_no_rsp"] = generate(model, sid_map, histories, e.beam_width, True, e.batch_size,
                                                     use_rank_head=False, item_weight=e.item_rerank_weight)
            rankings[f"{name}_no_rsp"] = one
            rows[f"{name}_no_rsp"] = ranking_metrics(one, truths, e.ks) | {"decode_s": time.perf_counter() - t0}
        if name != cfg.gate.method:  # free decoding costs a second beam search: only for the model the gate judges
            continue
        free, scores[f"{name}_free"] = generate(model, sid_map, histories, e.beam_width, False, e.batch_size)
        rankings[f"{name}_free"] = free
        rows[name] |= {f"free_{m}": v for m, v in ranking_metrics(free, truths, e.ks).items() if m.startswith("hr@")} | {
            "har": hallucination_rate(free), "har_top1": hallucination_rate(free, top=1)}
    for name, rank in baselines.items():
        rankings[name], scores[name] = rank(histories)
        rows[name] = ranking_metrics(rankings[name], truths, e.ks) | {"har": 0.0}
    return rows, rankings, scores


def _train_baselines(cfg: PipelineConfig, pages_dir: Path, sid_map: SidMap, valid) -> tuple[dict, dict]:
    """({name: histories -> (items, scores)}, {name: how its epoch was chosen}) for the configured baselines, from
    the training pages streamed past (each baseline reads them once). SASRec and BERT4Rec keep the epoch that is
    best on the validation requests (eval.select_metric)."""
    e = cfg.eval
    rankers, selection = {}, {}
    if "popularity" in e.baselines:
        ids, counts = popularity_ranking(iter_split_pages(pages_dir, "train"), e.beam_width, with_counts=True)
        rankers["popularity"] = lambda h: (np.tile(ids, (len(h), 1)), np.tile(counts.astype(np.float64), (len(h), 1)))
    for name in ("sasrec", "bert4rec"):
        if name in e.baselines:
            train = iter_split_pages(pages_dir, "train")
            rankers[name], selection[name] = _item_sequence_ranker(cfg, name, train, sid_map, valid)
    return rankers, selection


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


def _item_sequence_ranker(cfg: PipelineConfig, name: str, train, sid_map: SidMap, valid):
    """Train SASRec or BERT4Rec on the users' training sequences, keeping the epoch best on the validation
    requests (all epochs when there are none); (histories -> (N, beam_width) item ids over the full catalog and
    their scores, the selection record)."""
    row_of = {int(i): r + 1 for r, i in enumerate(sid_map.item_ids)}  # 1-based rows; 0 pads
    sequences = user_sequences(train, row_of)
    if not sequences:
        raise InputDataError(f"no user has two positive interactions in the training pages: {name} cannot be trained")
    max_len, n_items, seed, e = cfg.model.max_history, len(sid_map.item_ids), cfg.run.seed, cfg.eval
    train_fn, rank_fn, mcfg = (train_sasrec, sasrec_rank, e.sasrec) if name == "sasrec" else \
        (train_bert4rec, bert4rec_rank, e.bert4rec)
    metric, k = e.select_metric, int(e.select_metric.split("@")[1])
    best = {"epoch": mcfg.epochs, "metric": metric, f"valid_{metric}": None, "curve": []}
    state = {}

    def on_epoch(epoch, model):
        model.eval()
        rows = rank_fn(model, [[row_of[i] for i in h] for h in valid[0]], max_len, k)
        value = ranking_metrics(sid_map.item_ids[rows - 1], valid[1], [k])[metric]
        model.train()
        best["curve"].append(round(value, 5))
        if best[f"valid_{metric}"] is None or value > best[f"valid_{metric}"]:
            best.update({"epoch": epoch, f"valid_{metric}": value})
            state["weights"] = copy.deepcopy(model.state_dict())
        return bool(mcfg.patience) and epoch - best["epoch"] >= mcfg.patience

    model = train_fn(sequences, n_items, mcfg, max_len, seed, on_epoch if valid else None)
    if state:
        model.load_state_dict(state["weights"])
        best["epochs_run"] = len(best["curve"])
        print(f"{name}: epoch {best['epoch']} kept of {best['epochs_run']} run (at most {mcfg.epochs}; validation "
              f"{metric} {best[f'valid_{metric}']:.4f})", flush=True)

    def rank(histories):
        rows, scores = rank_fn(model, [[row_of[i] for i in h] for h in histories], max_len, e.beam_width,
                               with_scores=True)
        return sid_map.item_ids[rows - 1], scores

    return rank, best


def _markdown(results: dict, selection: dict, cfg: PipelineConfig) -> str:
    lines = ["# evaluate", ""]
    for split, title in (("test", "Test"), ("valid", "Validation (what the gate judges and the baselines' epochs "
                                                       "were chosen on)")):
        if split not in results:
            continue
        counts, rows, spans = (results[split][k] for k in ("requests", "metrics", "intervals"))
        table = metrics_table(rows)
        cols = list(table.columns)
        lines += [f"## {title}", "",
                  f"{counts['requests']} requests (of {counts['test_pages']} pages; {counts['no_history']} without "
                  f"history, {counts['no_truth']} without a true item of {cfg.eval.truth_types}).", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in table.itertuples(index=False):  # "-": a column that does not apply to the row (free_hr@K)
            lines.append("| " + " | ".join(("-" if np.isnan(v) else f"{v:.4f}") if isinstance(v, float) else str(v)
                                           for v in row) + " |")
        lines += ["", "95% bootstrap intervals over the requests (1000 resamples):", ""]
        for name, span in spans.items():
            lines.append(f"- {name}: " + "; ".join(f"{m} [{lo:.4f}, {hi:.4f}]" for m, (lo, hi) in span.items()))
        if results[split]["paired"]:
            lines += ["", "Paired differences on the same requests, with 95% paired bootstrap intervals (an interval "
                      "above 0: ahead beyond what these requests can resolve):", ""]
            for pair, diffs in results[split]["paired"].items():
                lines.append(f"- {pair}: " + "; ".join(f"{m} {d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
                                                       for m, (d, lo, hi) in diffs.items()))
        lines.append("")
    lines += [f"Beam width {cfg.eval.beam_width}. GenRec rows rank by trie-constrained beam search; their `har` is "
              "the share of SIDs that are no item when the same beams run without the trie (`har_top1`: of the top "
              "beams only), and `free_hr@K` the hit rate of those free beams (a SID that is no item is a miss). "
              "`r@K`: the highest reward-model score among the top K (mean over requests); `true_r@K`: the same with "
              "the simulator's true preference."]
    for name, sel in selection.items():
        metric = sel["metric"]
        lines.append(f"- {name}: epoch {sel['epoch']} kept" + (
            f" of {sel['epochs_run']} run, best validation {metric} {sel[f'valid_{metric}']:.4f}"
            if sel[f"valid_{metric}"] is not None
            else " (no validation split: the last epoch)"))
    return "\n".join(lines) + "\n"
