"""Bounded, seeded samples of a split's pages drawn while the split streams past (genrec.data.page_sample), the
same whatever the layout of the part files: evaluate's requests, train-reward's exposures."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data import page_sample
from genrec.errors import InputDataError
from genrec.eval.requests import sample_requests, select_requests

TRUTH = ["click", "order"]


def _pages(n: int, seed: int = 0) -> pd.DataFrame:
    """n test pages: every 7th without history, every 5th (of the rest) without a click or an order."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        clicked = [] if i % 5 == 0 else [int(rng.integers(100))]
        rows.append({"page_id": f"u{i % 50}-p{i}", "user_id": i % 50,
                     "page_start": pd.Timestamp("2026-01-20", tz="UTC") + pd.Timedelta(minutes=int(rng.integers(10_000))),
                     "history_items": [] if i % 7 == 0 else [int(x) for x in rng.integers(100, size=1 + i % 4)],
                     "exposed_items": [1, 2, 3], "clicked_items": clicked, "carted_items": [], "ordered_items": []})
    return pd.DataFrame(rows)


def _write(pages: pd.DataFrame, folder: Path, parts: int, row_group: int) -> Path:
    """The pages as validate-pages writes them (pages/split=test/...), cut into `parts` files of shuffled rows."""
    target = folder / "pages" / "split=test"
    target.mkdir(parents=True)
    shuffled = pages.sample(frac=1, random_state=parts)
    for n, chunk in enumerate(np.array_split(np.arange(len(shuffled)), parts)):
        pq.write_table(pa.Table.from_pandas(shuffled.iloc[chunk], preserve_index=False), target / f"part-{n}.parquet",
                       row_group_size=row_group)
    return folder


def _expected_counts(pages: pd.DataFrame) -> dict:
    no_history = int((pages["history_items"].map(len) == 0).sum())
    no_truth = int(((pages["history_items"].map(len) > 0) & (pages["clicked_items"].map(len) == 0)).sum())
    return {"test_pages": len(pages), "no_history": no_history, "no_truth": no_truth,
            "scorable": len(pages) - no_history - no_truth}


def test_sample_is_the_same_whatever_the_file_layout(tmp_path):
    pages = _pages(600)
    one = _write(pages, tmp_path / "one", parts=1, row_group=10_000)
    many = _write(pages, tmp_path / "many", parts=7, row_group=13)
    a = sample_requests(one, "test", TRUTH, 50, 100, seed=3)
    b = sample_requests(many, "test", TRUTH, 50, 100, seed=3, batch_rows=5)
    assert a[3]["page_id"].tolist() == b[3]["page_id"].tolist()
    assert a[0] == b[0] and a[1] == b[1]
    assert a[2] == b[2] == {**_expected_counts(pages), "requests": 100}
    # time order, as the whole split read at once gives it
    assert a[3]["page_start"].is_monotonic_increasing
    # another seed draws another sample of the same size
    c = sample_requests(one, "test", TRUTH, 50, 100, seed=4)
    assert len(c[0]) == 100 and set(c[3]["page_id"]) != set(a[3]["page_id"])


def test_without_a_bound_or_under_it_every_scorable_page_is_a_request(tmp_path):
    pages = _pages(200)
    folder = _write(pages, tmp_path, parts=3, row_group=17)
    counts = _expected_counts(pages)
    for bound in (0, counts["scorable"], 10_000):
        histories, truths, got, scored = sample_requests(folder, "test", TRUTH, 2, bound, seed=0, batch_rows=11)
        assert got == {**counts, "requests": counts["scorable"]}
        want = pages[(pages["history_items"].map(len) > 0) & (pages["clicked_items"].map(len) > 0)]
        want = want.sort_values(["page_start", "page_id"], kind="stable")
        assert scored["page_id"].tolist() == want["page_id"].tolist()
        assert histories == [list(h)[-2:] for h in want["history_items"]]  # cut to max_history
        assert truths == [set(c) for c in want["clicked_items"]]


def test_memory_holds_the_sample_and_a_batch_not_the_split(monkeypatch):
    largest = []
    real = page_sample.smallest_hashes

    def spy(held, budget):
        largest.append(len(held))
        return real(held, budget)

    monkeypatch.setattr(page_sample, "smallest_hashes", spy)
    pages = _pages(3_000)
    batches = (pages.iloc[lo:lo + 40] for lo in range(0, len(pages), 40))
    histories, _, counts, _ = select_requests(batches, TRUTH, 50, 25, seed=1)
    assert len(histories) == 25 and counts["scorable"] > 1_500
    assert largest and max(largest) <= 2 * 25 + 40


def test_a_damaged_part_is_named(tmp_path):
    folder = _write(_pages(50), tmp_path, parts=2, row_group=10)
    (folder / "pages" / "split=test" / "part-1.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputDataError, match="part-1.parquet"):
        sample_requests(folder, "test", TRUTH, 50, 10, seed=0)


def test_a_budget_of_sizes_keeps_the_smallest_hashes_up_to_it():
    pages = _pages(400)
    sizes = lambda p: p["exposed_items"].map(len).to_numpy() + p["clicked_items"].map(len).to_numpy()  # noqa: E731
    whole = page_sample.sample_pages([pages], 0, seed=5, size=sizes)
    assert len(whole) == len(pages)
    sample = page_sample.sample_pages((pages.iloc[lo:lo + 9] for lo in range(0, 400, 9)), 300, seed=5, size=sizes)
    # the pages with the smallest hashes, in hash order, up to the page that reaches the budget
    ranked = pages.assign(h=page_sample.page_hash(pages["page_id"], 5), n=sizes(pages)).sort_values("h")
    before = ranked["n"].cumsum() - ranked["n"]
    assert set(sample["page_id"]) == set(ranked[before < 300]["page_id"])
    assert 300 <= sizes(sample).sum() < 300 + sizes(pages).max()



def test_a_split_held_as_a_column_is_filtered(tmp_path):
    pages = _pages(90)
    folder = tmp_path / "pages"
    folder.mkdir()  # a folder made by hand: one file, the split a column (as the tests' own fixtures write it)
    with_split = pages.assign(split=["test" if i % 3 else "train" for i in range(90)])
    pq.write_table(pa.Table.from_pandas(with_split, preserve_index=False), folder / "part-0.parquet", row_group_size=8)
    _, _, counts, scored = sample_requests(tmp_path, "test", TRUTH, 50, 0, seed=0, batch_rows=8)
    assert counts["test_pages"] == 60 and set(scored["split"]) == {"test"}
