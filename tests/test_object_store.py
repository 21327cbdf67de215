"""Large inputs straight from an object store: ingest reads a parquet source at s3://bucket/prefix (moto's S3 server
on 127.0.0.1 here; MinIO or a cloud bucket on a cluster), with the keys and endpoint of the environment."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from genrec.data import tables
from genrec.data.io import read_parquet
from genrec.data.schema import EVENTS_FILE, ITEMS_FILE
from genrec.errors import InputDataError
from genrec.stages.ingest import run_ingest


def test_ingest_reads_a_parquet_source_from_the_bucket_and_writes_under_an_s3_data_root(s3, make_cfg, tmp_path):
    local = tmp_path / "local"
    run_ingest(make_cfg(), local, "store-1")  # the simulator's month, as canonical parquet (folders of parts)
    for name in (EVENTS_FILE, ITEMS_FILE):
        for part in Path(tables.locate(local, name, "")).glob("part-*.parquet"):
            s3.upload_file(str(part), "genrec-data", f"logs/2026-10/{name}/{part.name}")
    cfg = make_cfg("source.kind=parquet", "source.path=s3://genrec-data/logs/2026-10/",
                   "run.data_root=s3://genrec-data/runs")
    manifest = run_ingest(cfg, tmp_path / "from-s3", "store-2")
    ref = tables.read_ref(tmp_path / "from-s3", EVENTS_FILE)
    assert ref.uri == f"s3://genrec-data/runs/store-2/ingest/{EVENTS_FILE}"  # the table stays in the bucket
    assert not list((tmp_path / "from-s3").rglob("*.parquet"))  # the output folder holds its reference only
    from_s3 = tables.locate(tmp_path / "from-s3", EVENTS_FILE, "")  # checked against the reference, in the bucket
    assert read_parquet(from_s3, "").equals(pq.read_table(tables.locate(local, EVENTS_FILE, "")))
    assert manifest["n_events"] == ref.n_rows == tables.read_ref(local, EVENTS_FILE).n_rows


def test_a_missing_object_is_named(s3, make_cfg, tmp_path):
    cfg = make_cfg("source.kind=parquet", "source.path=s3://genrec-data/nothing-here")
    with pytest.raises(InputDataError, match="s3://genrec-data/nothing-here/events.parquet not found"):
        run_ingest(cfg, tmp_path / "out", "store-3")
    with pytest.raises(InputDataError, match="only source.kind=parquet reads from an object store"):
        run_ingest(make_cfg("source.kind=movielens", "source.path=s3://genrec-data/ml"), tmp_path / "o2", "store-4")


def test_copy_tree_both_ways_and_a_missing_source_is_named(s3, tmp_path):
    from genrec.data.io import copy_tree

    local = tmp_path / "out"
    (local / "pages" / "split=train").mkdir(parents=True)
    (local / "pages" / "split=train" / "part-0.parquet").write_bytes(b"a")
    (local / "report.json").write_text("{}")
    assert copy_tree(local, "s3a://genrec-data/run-1/output") == 2
    # (Arrow also leaves empty "folder/" marker objects; the files are what counts)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="genrec-data")["Contents"] if not o["Key"].endswith("/"))
    assert keys == ["run-1/output/pages/split=train/part-0.parquet", "run-1/output/report.json"]
    assert copy_tree("s3://genrec-data/run-1/output", tmp_path / "back") == 2
    assert (tmp_path / "back" / "pages" / "split=train" / "part-0.parquet").read_bytes() == b"a"
    # One file into a local folder that does not exist yet (how the Spark job's input is staged and fetched)
    assert copy_tree("s3a://genrec-data/run-1/output/report.json", tmp_path / "new" / "dir" / "report.json") == 1
    assert (tmp_path / "new" / "dir" / "report.json").read_text() == "{}"
    with pytest.raises(InputDataError, match="s3a://genrec-data/run-2/output not found"):
        copy_tree("s3a://genrec-data/run-2/output", tmp_path / "none")
