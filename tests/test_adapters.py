"""Real dataset adapters: MovieLens-100K and Amazon Beauty 5-core into the canonical schema."""

import shutil

import pyarrow.compute as pc
import pytest

from genrec.data.amazon_beauty import load_amazon_beauty
from genrec.data.movielens import RATING_TO_EVENT, load_movielens
from genrec.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA
from genrec.errors import InputDataError


def test_movielens(shared_data):
    events, items = load_movielens(shared_data / "movielens-100k")
    assert events.schema == EVENTS_SCHEMA and items.schema == ITEMS_SCHEMA
    assert events.num_rows == 100_000 and items.num_rows == 1682
    assert len(pc.unique(events.column("user_id"))) == 943
    ratings = [int(line.split("\t")[2]) for line in (shared_data / "movielens-100k" / "u.data").read_text().splitlines()]
    types = events.column("event_type").to_pylist()
    assert types.count("order") == ratings.count(5) and types.count("expose") == ratings.count(1) + ratings.count(2)
    assert set(RATING_TO_EVENT) == {1, 2, 3, 4, 5}
    toy_story = items.to_pylist()[0]
    assert toy_story["title"] == "Toy Story (1995)" and toy_story["category"] == "Movies > Animation"
    assert pc.min(events.column("ts")).as_py().year == 1997


def test_amazon_beauty(shared_data):
    events, items = load_amazon_beauty(shared_data / "amazon-beauty")
    assert events.num_rows == 198_502 and items.num_rows == 12_101
    assert len(pc.unique(events.column("user_id"))) == 22_363
    assert set(events.column("event_type").to_pylist()) == {"order"}
    first = items.to_pylist()[0]
    assert first["brand"] == "OPI" and first["category"] == "Makeup > Nails > Nail Polish"
    assert items.to_pylist()[2]["brand"] is None  # "Unknown" becomes null
    # each user's order is kept: user 1's third interaction comes two days after the first
    rows = [r for r in events.slice(0, 20).to_pylist() if r["user_id"] == 1]
    assert [r["item_id"] for r in rows] == [5, 6, 7, 8, 9, 3, 10]
    assert (rows[2]["ts"] - rows[0]["ts"]).days == 2


def test_missing_paths_are_clear(tmp_path):
    with pytest.raises(InputDataError, match="not found"):
        load_movielens(tmp_path / "nope")
    with pytest.raises(InputDataError, match="u.data"):
        load_movielens(tmp_path)
    with pytest.raises(InputDataError, match="Beauty.inter.json"):
        load_amazon_beauty(tmp_path)


def test_malformed_files_name_file_and_line(shared_data, tmp_path):
    ml = tmp_path / "ml"
    shutil.copytree(shared_data / "movielens-100k", ml)
    lines = (ml / "u.item").read_text(encoding="latin-1").splitlines()
    lines[4] = "5|broken"
    (ml / "u.item").write_text("\n".join(lines), encoding="latin-1")
    with pytest.raises(InputDataError, match=r"u.item: line 5"):
        load_movielens(ml)
    (ml / "u.data").write_text("1\t2\t9\t881250949\n")
    with pytest.raises(InputDataError, match=r"line 1: rating 9"):
        load_movielens(ml)

    ab = tmp_path / "ab"
    ab.mkdir()
    (ab / "Beauty.inter.json").write_text('{"0": [0, 1]}')
    (ab / "Beauty.item_meta.jsonl").write_bytes(b'{"item_id": 0, "categories": ["A"]}\n{"item_id": 1, "brand_guess": "\xff\xfe"}\n')
    with pytest.raises(InputDataError, match=r"line 2: not valid UTF-8"):
        load_amazon_beauty(ab)
    (ab / "Beauty.inter.json").write_text('{"0": [0, "x"]}')
    with pytest.raises(InputDataError, match="list of integer item ids"):
        load_amazon_beauty(ab)
