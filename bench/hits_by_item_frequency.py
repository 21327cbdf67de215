"""Hit@K of each method by how often the true item was a training target, on the validation and test splits.

Reads an evaluate folder's topk.parquet (every method's ranked items per request) and validate-pages' training
pages; no model runs. Used to see where GenRec and SASRec differ, and why a split is harder than another
(bench/results/ablations_amazon_beauty.md):

    python bench/hits_by_item_frequency.py --eval work/beauty16/stages/eval-ie64k-d02 \
        --pages work/beauty16/stages/pages --column ordered_items

Prints, per frequency bin, the requests and hit@K of each method per split; then each method's hit@K on the test
split re-weighted to the validation split's mix of bins (what test would score if its true items were as common
in training as the validation items are).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from genrec.data.io import read_split_pages

BINS, LABELS = [-1, 0, 4, 19, 99, np.inf], ["0", "1-4", "5-19", "20-99", "100+"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", required=True, help="An evaluate output folder (holds topk.parquet).")
    ap.add_argument("--pages", required=True, help="validate-pages' output folder (holds pages/).")
    ap.add_argument("--column", default="ordered_items", help="The page column whose items count as targets.")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--methods", default="genrec,sasrec", help="Comma-separated methods of topk.parquet.")
    args = ap.parse_args()

    train = read_split_pages(args.pages, "train")
    counts = pd.Series(np.concatenate([np.asarray(x, dtype=np.int64) for x in train[args.column]])).value_counts()
    top = pd.read_parquet(f"{args.eval}/topk.parquet")
    top = top[top["method"].isin(args.methods.split(","))].copy()
    if top.empty:
        raise SystemExit(f"{args.eval}/topk.parquet has none of the methods {args.methods}")
    top["hit"] = [float(bool(set(t) & set(r[:args.k]))) for t, r in zip(top["true_items"], top["ranked_items"])]
    # a request's frequency is that of its most-trained true item (Beauty has one true item per request)
    top["bin"] = pd.cut([max(counts.get(int(i), 0) for i in t) for t in top["true_items"]], BINS, labels=LABELS)
    rates = top.pivot_table(index="bin", columns=["split", "method"], values="hit", aggfunc="mean", observed=False)
    first = top["method"].iloc[0]
    sizes = top[top["method"] == first].groupby(["bin", "split"], observed=False).size().unstack("split")
    print(f"requests by the true item's count among the training pages' {args.column}:")
    print(sizes.to_string())
    print(f"hit@{args.k} per bin:")
    print(rates.round(4).to_string())
    mix = sizes / sizes.sum()
    for method in args.methods.split(","):
        valid = (rates[("valid", method)].fillna(0) * mix["valid"]).sum()
        test = (rates[("test", method)].fillna(0) * mix["test"]).sum()
        test_at_valid_mix = (rates[("test", method)].fillna(0) * mix["valid"]).sum()
        print(f"{method}: valid {valid:.4f}, test {test:.4f} (x{test / valid:.2f}); test at the validation "
              f"split's mix of bins {test_at_valid_mix:.4f} (x{test_at_valid_mix / valid:.2f})")


if __name__ == "__main__":
    main()
