"""Benchmark: how much can any recommender beat most-popular on the simulated month?

The test pages were served by the simulator's existing system (popular slots plus a weekly pool of
personalised candidates), and the ground truth is what the user clicked on them. So a ranking can only
beat most-popular where the page's exposures are predictable. This script simulates the month for each
value of `simulator.system_noise_persistence` (how much of the system's error about a user survives its
weekly refresh) and scores, on the last day's requests with a click (as the evaluate stage's requests,
except that pages without a history are kept):

  popularity           clicks on the earlier days, most first (the evaluate baseline)
  recent clicks        the user's last 50 clicked items, newest first, after the 3 most popular and before
                       the rest of the popularity list: a crude learnable ranking
  oracle preference    the simulator's true p(click | examined) for that user and day
  oracle exposure      P(item on the page) under the true system pools of that week
  oracle expected click   exposure x preference: the best any ranking can expect to do

and the share of a user's pool that survives from one week to the next.

    python bench/simulator_headroom.py --config configs/demo.yaml --results bench/results/simulator_headroom.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from genrec.config import load_config
from genrec.data.simulator import days_since_start, logging_policy, simulate
from genrec.eval.metrics import ranking_metrics

KS = [1, 10, 50]


def headroom(cfg, seed: int) -> tuple[dict[str, dict[str, float]], float, int]:
    """(metrics per ranking, week-to-week pool overlap, number of requests) for one simulator config."""
    sc = cfg.simulator
    logs = simulate(sc, seed, progress=False)
    policy = logging_policy(sc, seed)
    ev = logs.events.to_pandas()
    ev["day"] = np.floor(days_since_start(ev["ts"], sc.start_date)).astype(int)
    clicks = ev[ev.event_type == "click"]
    last = sc.days - 1
    test = clicks[clicks.day == last].groupby("request_id").agg(user=("user_id", "first"), ts=("ts", "first"),
                                                                 items=("item_id", set))
    truths = list(test["items"])
    users = test["user"].to_numpy()
    n_items = logs.items.num_rows
    popular = np.argsort(-np.bincount(clicks.loc[clicks.day < last, "item_id"], minlength=n_items), kind="stable")
    rows = {"popularity": np.tile(popular[:max(KS)], (len(test), 1))}

    history = clicks.sort_values("ts").groupby("user_id")[["item_id", "ts"]]
    by_user = {u: g for u, g in history}
    recent = []
    for u, ts in zip(users, test["ts"]):
        g = by_user[u]
        seen = list(dict.fromkeys(reversed(g.loc[g.ts < ts, "item_id"].to_list()[-50:])))
        recent.append(list(dict.fromkeys([*popular[:3], *seen, *popular]))[:max(KS)])
    rows["recent clicks"] = np.array(recent)

    days = np.full(len(users), float(last))
    pref = np.stack([logs.truth.click_probability(np.full(n_items, u), np.arange(n_items), last) for u in users])
    exposure = policy.exposure_probability(users, days)
    for name, score in (("oracle preference", pref), ("oracle exposure", exposure),
                        ("oracle expected click", exposure * pref)):
        rows[name] = np.argsort(-score, axis=1, kind="stable")[:, :max(KS)]
    metrics = {name: ranking_metrics(r, truths, KS) for name, r in rows.items()}
    pools = policy.pools
    week = min(last // 7, len(pools) - 1)
    overlap = np.mean([len(np.intersect1d(pools[week - 1, u], pools[week, u])) for u in range(len(pools[0]))])
    return metrics, float(overlap / pools.shape[2]), len(test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--results", required=True, help="Markdown file to write.")
    ap.add_argument("--settings", nargs="+", default=["0.0:0.0", "0.9:0.0", "0.9:1.0"],
                    help="persistence:rank_decay pairs (simulator.system_noise_persistence, simulator.pool_rank_decay).")
    args = ap.parse_args()
    cols = [f"{m}@{k}" for k in KS for m in ("hr", "ndcg")]
    lines = [f"config `{args.config}`; last day's requests with a click; rankings of the full catalog.", ""]
    for setting in args.settings:
        rho, decay = setting.split(":")
        cfg = load_config(args.config, [f"simulator.system_noise_persistence={rho}", f"simulator.pool_rank_decay={decay}"])
        metrics, overlap, n = headroom(cfg, cfg.run.seed)
        lines += [f"## system_noise_persistence = {rho}, pool_rank_decay = {decay}", "",
                  f"{n} requests; a user's pool keeps {overlap:.0%} of its items from one week to the next.", "",
                  "| ranking | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
        lines += [f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |" for name, m in metrics.items()]
        lines.append("")
        print("\n".join(lines[-len(metrics) - 6:]), flush=True)
    Path(args.results).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
