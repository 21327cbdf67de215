"""What the logs can tell a reward model on the simulator: the true preference's AUC (the ceiling) against oracles
that know the true item vectors but estimate the rest from the logs.

Each oracle scores an exposure with the simulator's own formula, preference_scale * cos(u, v_item) plus a
popularity term, where u is the mean of the true vectors of the user's last `--history` engaged items (what a
history of clicks can say about her). The popularity term is the true one, or a learned weight times an estimate
from the training exposures (`genrec.reward.exposures.exposure_popularity`: the exposure count, or the count of
distinct users shown the item), the weights fitted by logistic regression on the validation day and read on the
test day. The gaps between the rows say what each unknown costs.

    python bench/reward_bounds.py --ingest <ingest folder> --pages <validate-pages folder> --sids <assign-sids folder>
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from genrec.config import load_config
from genrec.data.io import read_split_pages
from genrec.data.simulator import days_since_start, load_truth
from genrec.model.vocab import SidMap
from genrec.reward.exposures import build_exposures, exposure_popularity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ingest", required=True, help="ingest's folder (ground_truth.npz)")
    ap.add_argument("--pages", required=True, help="validate-pages' folder (train, valid and test pages)")
    ap.add_argument("--sids", required=True, help="assign-sids' folder (the item rows of the pages' exposures)")
    ap.add_argument("--config", default="configs/demo.yaml", help="the config the logs were simulated with")
    ap.add_argument("--history", type=int, default=50, help="history items that estimate the user")
    args = ap.parse_args()
    cfg, truth, sid_map = load_config(args.config), load_truth(args.ingest), SidMap.load(args.sids)
    if truth is None:
        raise SystemExit(f"{args.ingest}: no ground_truth.npz (these logs are not from the simulator)")
    unit = truth.item_vec / np.linalg.norm(truth.item_vec, axis=1, keepdims=True)
    n = len(sid_map.item_ids)
    train = build_exposures(read_split_pages(args.pages, "train"), sid_map, args.history, 0, 0)
    pops = {"exposure count": exposure_popularity(train.row, n),
            "distinct users": exposure_popularity(train.row, n, train.user[train.page])}
    for name, pop in pops.items():
        corr = np.corrcoef(truth.item_logpop_z[sid_map.item_ids], pop)[0, 1]
        print(f"corr(true log popularity, {name}) = {corr:.3f}")
    days = {}
    for split in ("valid", "test"):
        data = build_exposures(read_split_pages(args.pages, split), sid_map, args.history, 0, 0)
        hist = data.history.numpy()
        u = np.stack([unit[sid_map.item_ids[h[h > 0] - 1]].mean(0) for h in hist])
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        cos = (u[data.page] * unit[data.item]).sum(-1)
        day = days_since_start(data.page_start, cfg.simulator.start_date)
        ceiling = truth.click_probability(data.user[data.page], data.item, day[data.page])
        oracle = truth.preference_scale * cos + truth.popularity_scale * truth.item_logpop_z[data.item]
        days[split] = {"data": data, "cos": cos, "ceiling": ceiling, "oracle": oracle}
    print("| score | valid AUC | test AUC |\n|---|---|---|")
    for label, key in (("true preference (the ceiling)", "ceiling"),
                       ("true items, history users, true popularity", "oracle")):
        cells = [f"{roc_auc_score(d['data'].label, d[key]):.4f}" for d in days.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name, pop in pops.items():
        x = {split: np.c_[d["cos"], pop[d["data"].row - 1]] for split, d in days.items()}
        fit = LogisticRegression(C=10.0, max_iter=1000).fit(x["valid"], days["valid"]["data"].label)
        cells = [f"{roc_auc_score(d['data'].label, fit.decision_function(x[split])):.4f}" for split, d in days.items()]
        print(f"| true items, history users, popularity by {name} (fitted on valid) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
