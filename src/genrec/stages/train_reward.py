"""Stage train-reward: training pages + SID map -> the SIM-style reward model r_pref (paper: the preference reward).

Reads validate-pages' folder (pages/, both splits), assign-sids' folder and, optionally, ingest's folder
(the simulator's ground_truth.npz, to compare with the true click probabilities; items.parquet when
`reward.item_features` names catalog columns). Writes into
`out_dir`: reward_model/ (safetensors + JSON), calibration.csv, report.md and report.json.

Examples are the pages' exposures: ordered, carted or clicked items are positives, exposed-only items
negatives. Measured on the test day's exposures: AUC, log loss, calibration (ECE); on the simulator
also the AUC of the true preference p(click | examined), the ceiling a model of preference can reach
(positions are not in the pages, so the true clicks are noisier than the true preference).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genrec import stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.data import tables
from genrec.data.io import iter_split_pages, read_parquet
from genrec.data.schema import ITEMS_FILE
from genrec.errors import ConfigError, InputDataError
from genrec.model.vocab import SidMap
from genrec.reward.exposures import build_exposures, exposure_popularity
from genrec.reward.fit import calibration_table, classification_metrics, predict, train_reward_model
from genrec.reward.sim_model import SimRewardModel, item_feature_values


def run_train_reward(cfg: PipelineConfig, pages_dir: str | Path, sids_dir: str | Path, out_dir: str | Path,
                     pipeline_run_id: str, raw_dir: str | Path | None = None) -> dict:
    """Train the reward model and measure it on the test day; returns the report (also report.json)."""
    pages_dir, sids_dir, out_dir = Path(pages_dir), Path(sids_dir), Path(out_dir)
    out_dir = stage_outputs.begin(out_dir, "train-reward", pipeline_run_id, {"pages": pages_dir, "sids": sids_dir, "raw": raw_dir})
    r = cfg.reward
    sid_map = SidMap.load(sids_dir)
    features = _item_features(r.item_features, raw_dir, sid_map)  # before the exposures: a missing --raw fails fast
    # the pages stream past: memory holds the sampled exposures (reward.max_examples), not the split
    train = build_exposures(iter_split_pages(pages_dir, "train"), sid_map, r.max_history, r.max_examples, cfg.run.seed)
    test = build_exposures(iter_split_pages(pages_dir, "test"), sid_map, r.max_history, r.max_eval_examples,
                           cfg.run.seed + 1)
    for name, data in (("train", train), ("test", test)):
        if len(data) == 0 or len(np.unique(data.label)) < 2:
            raise InputDataError(f"{pages_dir / 'pages'}: the {name} split has {len(data)} exposures with history "
                                 f"({int(data.label.sum())} engaged): the reward model needs engaged and exposed-only items")
    popularity = None
    if r.item_popularity:
        users = train.user[train.page] if r.popularity_count == "users" else None
        popularity = exposure_popularity(train.row, len(sid_map.item_ids), users)
    torch.manual_seed(cfg.run.seed)
    model = SimRewardModel(sid_map.item_ids, sid_map.codes, sid_map.sizes, r.search, r.top_k, r.recent, r.dim, r.heads,
                           r.mlp, sid_map.fingerprint(), features, popularity)
    with tracking.stage_run(cfg, "train-reward", pipeline_run_id) as track:
        track.params({"reward": r.model_dump(mode="json")})
        rows = train_reward_model(model, train, r, cfg.run.seed,
                                  lambda step, row: track.metrics({f"train/{k}": v for k, v in row.items()}, step=step))
        prob = predict(model, test)
        report = {"train_exposures": len(train), "train_positive_rate": float(train.label.mean()),
                  "test_exposures": len(test), "skipped_no_history": train.skipped_no_history + test.skipped_no_history,
                  "final_train_loss": rows[-1]["loss"] if rows else float("nan"),
                  "final_train_bce": rows[-1]["bce"] if rows else float("nan"),
                  "test": classification_metrics(prob, test.label)}
        truth = _truth_auc(cfg, raw_dir, test)
        if truth is not None:
            report["test"]["true_preference_auc"] = truth
        calib = pd.DataFrame(calibration_table(prob, test.label))
        calib.to_csv(out_dir / "calibration.csv", index=False)
        model.save(out_dir / "reward_model")
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        (out_dir / "report.md").write_text(_markdown(report, calib))
        track.metrics({f"test/{k}": v for k, v in report["test"].items()})
        track.metrics({k: v for k, v in report.items() if isinstance(v, (int, float))})
        track.artifact(out_dir / "report.md", "reward")
        track.artifact(out_dir / "calibration.csv", "reward")
        track.artifact(out_dir / "reward_model", "reward_model")
    stage_outputs.complete(out_dir)
    return report


def _item_features(columns: list[str], raw_dir, sid_map: SidMap) -> dict | None:
    """The catalog columns' value indices per SID-table item (reward.item_features), read from ingest's items."""
    if not columns:
        return None
    if raw_dir is None:
        raise ConfigError(f"reward.item_features={columns} needs ingest's folder (--raw) for its {ITEMS_FILE}")
    path = tables.locate(raw_dir, ITEMS_FILE, "run ingest first")
    table = read_parquet(path, "run ingest first")
    items = table.select([c for c in ["item_id", *columns] if c in table.column_names]).to_pandas()
    return item_feature_values(items, sid_map.item_ids, columns, path)


def _truth_auc(cfg: PipelineConfig, raw_dir, test) -> float | None:
    """AUC of the simulator's true preference on the test exposures, when ground_truth.npz is there."""
    from genrec.data.simulator import days_since_start, load_truth

    truth = load_truth(raw_dir) if cfg.source.kind == "simulator" else None
    if truth is None:
        return None
    day = days_since_start(test.page_start, cfg.simulator.start_date)
    p = truth.click_probability(test.user[test.page], test.item, day[test.page])
    return classification_metrics(p, test.label)["auc"]


def _markdown(report: dict, calib: pd.DataFrame) -> str:
    t = report["test"]
    lines = ["# train-reward", "",
             f"{report['train_exposures']} training exposures (engaged: {report['train_positive_rate']:.3f}); "
             f"{report['test_exposures']} test-day exposures.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in t.items()]
    if "true_preference_auc" in t:
        lines += ["", "`true_preference_auc`: the simulator's true p(click | examined) as a score (the ceiling)."]
    lines += ["", "Calibration (test day):", "", "| bin | n | mean_pred | observed |", "|---|---|---|---|"]
    lines += [f"| {r.bin} | {r.n} | {r.mean_pred:.4f} | {r.observed:.4f} |" for r in calib.itertuples(index=False)]
    return "\n".join(lines) + "\n"
