"""MovieLens-100K (GroupLens) into the canonical schema.

Original data: https://grouplens.org/datasets/movielens/100k/ (research use, no redistribution;
cite F. M. Harper and J. A. Konstan, 2015). Point `source.path` at the unpacked `ml-100k` folder.

Mapping. Each rating is one event at its real timestamp, with the rating's strength as intensity:
rating 5 -> order, 4 -> cart, 3 -> click, 1-2 -> expose (seen, not liked: a negative). There are no
feed requests, so `request_id` and `position` are null and sessionization uses its fallback rule.
Items: title from u.item, category "Movies > <first genre>", description lists all genres and the
release date; no brand, price or image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from genrec.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA
from genrec.errors import InputDataError

RATING_TO_EVENT = {1: "expose", 2: "expose", 3: "click", 4: "cart", 5: "order"}
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def _need(path: Path, name: str) -> Path:
    f = path / name
    if not f.is_file():
        raise InputDataError(f"MovieLens-100K: {f} not found; source.path must be the unpacked ml-100k folder "
                             "(from https://grouplens.org/datasets/movielens/100k/)")
    return f


def load_movielens(path: str | Path) -> tuple[pa.Table, pa.Table]:
    """Read u.data and u.item; return (events, items) in the canonical schema."""
    path = Path(path)
    if not path.is_dir():
        raise InputDataError(f"MovieLens-100K: folder {path} not found")
    data_file = _need(path, "u.data")
    try:
        ratings = pd.read_csv(data_file, sep="\t", header=None, names=["user", "item", "rating", "ts"], dtype="int64")
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputDataError(f"{data_file}: expected 4 tab-separated integers per line (user, item, rating, ts): {exc}") from None
    bad = ~ratings["rating"].isin(list(RATING_TO_EVENT))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputDataError(f"{data_file}: line {row + 1}: rating {ratings['rating'].iloc[row]} is not in 1..5")
    events = pa.table(
        {
            "event_id": pa.array(np.arange(len(ratings), dtype=np.int64)),
            "user_id": pa.array(ratings["user"].to_numpy()),
            "item_id": pa.array(ratings["item"].to_numpy()),
            "event_type": pa.array(ratings["rating"].map(RATING_TO_EVENT).to_numpy(), type=pa.string()),
            "ts": pa.array(ratings["ts"].to_numpy() * 1_000_000, type=pa.timestamp("us", tz="UTC")),
            "request_id": pa.nulls(len(ratings), pa.int64()),
            "position": pa.nulls(len(ratings), pa.int32()),
        },
        schema=EVENTS_SCHEMA,
    )
    return events, _load_items(_need(path, "u.item"))


def _load_items(item_file: Path) -> pa.Table:
    ids, titles, descs, cats = [], [], [], []
    # u.item is latin-1 (GroupLens' own encoding).
    for lineno, line in enumerate(item_file.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 5 + len(GENRES):
            raise InputDataError(f"{item_file}: line {lineno}: expected {5 + len(GENRES)} '|'-separated fields, got {len(parts)}")
        try:
            flags = [int(x) for x in parts[5:]]
            item_id = int(parts[0])
        except ValueError:
            raise InputDataError(f"{item_file}: line {lineno}: item id and genre flags must be integers") from None
        genres = [g for g, f in zip(GENRES, flags) if f] or ["unknown"]
        ids.append(item_id)
        titles.append(parts[1])
        cats.append(f"Movies > {genres[0]}")
        released = f" Released {parts[2]}." if parts[2] else ""
        descs.append(f"Genres: {', '.join(genres)}.{released}")
    n = len(ids)
    return pa.table(
        {"item_id": pa.array(ids, pa.int64()), "title": titles, "description": descs, "category": cats,
         "brand": pa.nulls(n, pa.string()), "price": pa.nulls(n, pa.float64()), "image_path": pa.nulls(n, pa.string())},
        schema=ITEMS_SCHEMA,
    )
