"""Tables passed by reference (genrec.data.tables): a stage finds its input's table through the reference its producer
recorded, and refuses one that no longer matches it; part writers keep memory to a batch."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec import stage_outputs
from genrec.data import tables
from genrec.errors import InputDataError


def _table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"user_id": rng.integers(0, 100, n), "item_id": rng.integers(0, 1000, n)})


@pytest.fixture
def recorded(tmp_path):
    """A stage's output folder (finished) whose events table lives elsewhere, as two parts."""
    data = tmp_path / "data" / "run" / "ingest" / "events.parquet"
    writer = tables.PartWriter(str(data), rows_per_part=600)
    writer.write(_table(1000))
    assert writer.close() == 1000 and writer.n_parts == 2
    out = stage_outputs.begin(tmp_path / "out", "ingest", "run", {})
    ref = tables.record(out, "events.parquet", str(data), written_by="ingest")
    return stage_outputs.complete(out), data, ref


def test_a_reference_names_the_table_and_what_it_held(recorded):
    out, data, ref = recorded
    assert tables.locate(out, "events.parquet", "run ingest") == str(data)
    saved = json.loads((out / "events.parquet.ref.json").read_text())
    assert saved["n_rows"] == 1000 and saved["n_files"] == 2 and saved["schema"] == {"user_id": "int64", "item_id": "int64"}
    assert not list(out.rglob("*.parquet"))  # the output folder holds the reference, not the data


@pytest.mark.parametrize("damage", ["rewritten", "truncated", "removed", "added"])
def test_a_table_changed_after_its_stage_finished_is_refused(recorded, damage):
    out, data, _ = recorded
    part = data / "part-00001.parquet"
    if damage == "rewritten":  # same row count, other values
        pq.write_table(_table(400, seed=1), part)
    elif damage == "truncated":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    elif damage == "removed":
        part.unlink()
    else:
        pq.write_table(_table(10), data / "part-00002.parquet")
    with pytest.raises(InputDataError) as exc:
        tables.locate(out, "events.parquet", "run ingest")
    text = str(exc.value)
    assert "events.parquet" in text and "rerun ingest" in text
    if damage in ("rewritten", "added", "removed"):
        assert "is not the one recorded" in text and "the reference says 1,000 rows in 2 files" in text


def test_rows_differing_from_the_reference_are_named(recorded):
    out, data, _ = recorded
    pq.write_table(_table(300, seed=2), data / "part-00001.parquet")
    with pytest.raises(InputDataError, match=r"it has 900 rows in 2 files .* says 1,000 rows in 2 files"):
        tables.locate(out, "events.parquet", "")


def test_hand_made_folders_hold_tables_in_place_but_a_stage_made_one_needs_its_reference(recorded, tmp_path):
    out, _, _ = recorded
    mine = tmp_path / "mine"
    mine.mkdir()
    pq.write_table(_table(5), mine / "events.parquet")
    assert tables.locate(mine, "events.parquet", "") == str(mine / "events.parquet")
    with pytest.raises(InputDataError, match=r"items.parquet not found \(run ingest\)"):
        tables.locate(mine, "items.parquet", "run ingest")
    (out / "events.parquet.ref.json").unlink()
    pq.write_table(_table(5), out / "events.parquet")  # a table in a stage's folder is not what the stage recorded
    with pytest.raises(InputDataError, match="has no reference to its table events.parquet"):
        tables.locate(out, "events.parquet", "run ingest")


def test_forwarding_a_reference_checks_it_first(recorded, tmp_path):
    out, data, ref = recorded
    assert tables.forward(out, tmp_path / "next", "events.parquet").content_hash == ref.content_hash
    assert tables.locate(tmp_path / "next", "events.parquet", "") == str(data)
    (data / "part-00000.parquet").unlink()
    with pytest.raises(InputDataError, match="is not the one recorded"):
        tables.forward(out, tmp_path / "again", "events.parquet")


def test_the_data_folder_of_a_run_and_stage_starts_empty(tmp_path):
    from genrec.config import load_config

    cfg = load_config(None, [f"run.work_dir={tmp_path}"])
    first = tables.fresh_data_dir(cfg, "ingest", "run-1")
    (tmp_path / "data" / "run-1" / "ingest" / "left-over").write_text("from a killed attempt")
    assert tables.fresh_data_dir(cfg, "ingest", "run-1") == first == str(tmp_path / "data" / "run-1" / "ingest")
    assert not list((tmp_path / "data" / "run-1" / "ingest").iterdir())
    with pytest.raises(InputDataError, match="pipeline run id is empty"):
        tables.data_dir(cfg, "ingest", "")


def test_a_stage_refuses_an_input_table_rewritten_after_it_was_recorded(recorded, make_cfg, tmp_path):
    from genrec.stages.sessionize import run_sessionize

    out, data, _ = recorded
    pq.write_table(_table(400, seed=1), data / "part-00001.parquet")  # same rows, other values
    with pytest.raises(InputDataError, match=r"events.parquet.ref.json: the table at .* is not the one recorded"):
        run_sessionize(make_cfg(), out, tmp_path / "sessionized", "run-2")
    assert not (tmp_path / "sessionized").exists()
