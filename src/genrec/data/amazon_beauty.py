"""Amazon Beauty 5-core (Amazon 2014 reviews, McAuley lab, UCSD) into the canonical schema.

Original data: https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html (research use); this
adapter reads the preprocessed form used by TIGER / LC-Rec / P5: `Beauty.inter.json`
({user_id: [item_id, ...]} in time order) and `Beauty.item_meta.jsonl` (asin, brand_guess, categories).

Mapping. Every interaction is a review, i.e. a purchase: event type `order`. The data has no
timestamps, only each user's order, so timestamps are synthetic: a user's k-th interaction happens
at 2014-01-01 + k days (order preserved; absolute times mean nothing). Use it with
`sessionize.split.mode=leave_one_out` (the standard protocol). Items: no title or description exist
in this data; category is the category path and brand the brand guess (empty and "Unknown" become
null; HTML entities are unescaped).
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from genrec.data.schema import CATEGORY_SEP, EVENTS_SCHEMA, ITEMS_SCHEMA
from genrec.errors import InputDataError

SYNTHETIC_START = datetime(2014, 1, 1, tzinfo=timezone.utc)
US_PER_DAY = 86_400_000_000


def _need(path: Path, name: str) -> Path:
    f = path / name
    if not f.is_file():
        raise InputDataError(f"Amazon Beauty: {f} not found; source.path must hold Beauty.inter.json and "
                             "Beauty.item_meta.jsonl (see the adapter's docstring for where they are published)")
    return f


def load_amazon_beauty(path: str | Path) -> tuple[pa.Table, pa.Table]:
    """Read the interactions and item metadata; return (events, items) in the canonical schema."""
    path = Path(path)
    if not path.is_dir():
        raise InputDataError(f"Amazon Beauty: folder {path} not found")
    inter_file = _need(path, "Beauty.inter.json")
    try:
        inter = json.loads(inter_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"{inter_file}: not valid UTF-8 JSON: {exc}") from None
    if not isinstance(inter, dict):
        raise InputDataError(f"{inter_file}: expected an object {{user_id: [item_id, ...]}}")
    users, items, steps = [], [], []
    for user, seq in inter.items():
        if not isinstance(seq, list) or not all(isinstance(x, int) for x in seq):
            raise InputDataError(f"{inter_file}: user {user!r}: expected a list of integer item ids")
        try:
            uid = int(user)
        except ValueError:
            raise InputDataError(f"{inter_file}: user key {user!r} is not an integer id") from None
        users.extend([uid] * len(seq))
        items.extend(seq)
        steps.extend(range(len(seq)))
    start_us = int(SYNTHETIC_START.timestamp()) * 1_000_000
    n = len(users)
    events = pa.table(
        {
            "event_id": pa.array(np.arange(n, dtype=np.int64)),
            "user_id": pa.array(users, pa.int64()),
            "item_id": pa.array(items, pa.int64()),
            "event_type": pa.array(["order"] * n, pa.string()),
            "ts": pa.array(start_us + np.asarray(steps, dtype=np.int64) * US_PER_DAY, type=pa.timestamp("us", tz="UTC")),
            "request_id": pa.nulls(n, pa.int64()),
            "position": pa.nulls(n, pa.int32()),
        },
        schema=EVENTS_SCHEMA,
    )
    return events, _load_items(_need(path, "Beauty.item_meta.jsonl"))


def _load_items(meta_file: Path) -> pa.Table:
    ids, cats, brands = [], [], []
    with meta_file.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
                item_id = int(rec["item_id"])
            except UnicodeDecodeError:
                raise InputDataError(f"{meta_file}: line {lineno}: not valid UTF-8") from None
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise InputDataError(f"{meta_file}: line {lineno}: expected a JSON object with an integer item_id ({exc})") from None
            brand = html.unescape(rec.get("brand_guess") or "").strip()
            cat = rec.get("categories") or []
            ids.append(item_id)
            brands.append(None if brand in ("", "Unknown") else brand)
            cats.append(CATEGORY_SEP.join(html.unescape(c) for c in cat) if cat else None)
    n = len(ids)
    return pa.table(
        {"item_id": pa.array(ids, pa.int64()), "title": pa.nulls(n, pa.string()), "description": pa.nulls(n, pa.string()),
         "category": cats, "brand": brands, "price": pa.nulls(n, pa.float64()), "image_path": pa.nulls(n, pa.string())},
        schema=ITEMS_SCHEMA,
    )
