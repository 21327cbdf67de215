"""Reading parquet (local or in an object store) with errors that name the file and what to do about it; copying
files to and from the object store."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from genrec.errors import InputDataError


def is_object_store(path: str | Path) -> bool:
    """An s3:// or s3a:// location (an S3-compatible object store; s3a is Hadoop's name for the same bucket) rather
    than a local path."""
    return str(path).startswith(("s3://", "s3a://"))


def location(uri: str | Path):
    """(Arrow file system, path in it) of a local path (or file://) or an s3:// / s3a:// URI."""
    from pyarrow import fs

    if is_object_store(uri):
        return object_store(), str(uri).split("://", 1)[1].rstrip("/")
    uri = str(uri).removeprefix("file://")
    return fs.LocalFileSystem(), str(Path(uri).resolve())


def copy_tree(source: str | Path, target: str | Path) -> int:
    """Copy a file or a folder between this machine and the object store, either way; returns the files copied. A
    source that is not there raises InputDataError naming it."""
    from pyarrow import fs

    src_fs, src = location(source)
    dst_fs, dst = location(target)
    info = src_fs.get_file_info(src)
    if info.type == fs.FileType.NotFound:
        raise InputDataError(f"{source} not found")
    listed = [] if info.type == fs.FileType.File else [
        f for f in src_fs.get_file_info(fs.FileSelector(src, recursive=True)) if f.type == fs.FileType.File]
    files = 1 if info.type == fs.FileType.File else len(listed)
    # A local target's folders may not exist yet: Arrow creates them only from a bucket's folder marker objects,
    # which files uploaded by other tools do not have.
    if not is_object_store(target):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        for f in listed:
            (Path(dst) / f.path[len(src):].lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    fs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)
    return files


def object_store() -> "pa.fs.S3FileSystem":
    """Arrow's S3 filesystem for AWS_ENDPOINT_URL (MinIO, Ceph; empty: AWS), with the AWS_* keys of the environment,
    as the pods get them from cluster.object_store_secret / _config_map."""
    from pyarrow import fs

    endpoint = urlparse(os.environ.get("AWS_ENDPOINT_URL", ""))
    where = {"endpoint_override": endpoint.netloc, "scheme": endpoint.scheme} if endpoint.netloc else {}
    return fs.S3FileSystem(region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), **where)


def read_parquet(path: str | Path, missing_hint: str) -> pa.Table:
    """Read a parquet file or a folder of parts, local or s3://; a missing or unreadable one raises InputDataError
    naming it."""
    from pyarrow import fs

    store, key = location(path)
    kind = "parquet file"
    try:
        info = store.get_file_info(key)
        if info.type == fs.FileType.NotFound:
            raise InputDataError(f"{path} not found ({missing_hint})")
        if info.type == fs.FileType.Directory:
            kind = "parquet dataset"
            return ds.dataset(key, filesystem=store, format="parquet").to_table()
        return pq.read_table(key, filesystem=store)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{path}: not a readable {kind}: {exc}") from None


def read_table(folder: str | Path, name: str, missing_hint: str) -> pa.Table:
    """Table `name` of a stage's output folder (genrec.data.tables: by reference, checked, or in place), whole: for
    the small tables (the catalog, the SID table)."""
    from genrec.data import tables

    return read_parquet(tables.locate(folder, name, missing_hint), missing_hint)


def scan_parquet(path: str | Path, missing_hint: str, batch_rows: int = 262_144):
    """(schema, batches) of a parquet file or a folder of parts, local or s3://, read a batch at a time: memory
    holds a batch or two, not the table. A missing or unreadable file raises InputDataError naming it, also when
    the damage shows only on the way."""
    from pyarrow import fs

    store, key = location(path)
    info = store.get_file_info(key)
    if info.type == fs.FileType.NotFound:
        raise InputDataError(f"{path} not found ({missing_hint})")
    kind = "parquet file" if info.type == fs.FileType.File else "parquet dataset"
    try:
        dataset = ds.dataset(key, filesystem=store, format="parquet")
        schema = dataset.schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{path}: not a readable {kind}: {exc}") from None

    def batches():
        # File by file rather than dataset.to_batches: the dataset scanner reads ahead of a slow consumer (a
        # writer) by hundreds of MB whatever its readahead settings; one ParquetFile holds one row group.
        for part in dataset.files:
            try:
                with store.open_input_file(part) as f:
                    yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows)
            except (pa.ArrowInvalid, OSError) as exc:
                where = path if part == key else f"{path} ({part.rsplit('/', 1)[-1]})"
                raise InputDataError(f"{where}: not a readable {kind}: {exc}") from None

    return schema, batches()


def ingest_files(raw_dir: str | Path) -> Path:
    """The local folder holding what ingest wrote beside its tables (the simulator's ground truth, item images): the
    data folder its manifest names, or the folder itself when it was made by hand (no data_dir in a manifest)."""
    import json

    manifest = Path(raw_dir) / "manifest.json"
    try:
        data_dir = json.loads(manifest.read_text()).get("data_dir")
    except (OSError, ValueError):
        data_dir = None
    if data_dir and is_object_store(data_dir):
        raise InputDataError(f"{manifest}: ingest's files are in {data_dir}; this stage reads them (ground truth, "
                             f"images) from a local folder only")
    return Path(data_dir) if data_dir else Path(raw_dir)


def _pages_dataset(pages: str | Path, missing_hint: str):
    """(file system, Arrow dataset) of a pages folder partitioned by split (split=train/...; a folder made by hand
    may hold `split` as a column); a missing or unreadable one raises InputDataError naming it."""
    from pyarrow import fs

    store, key = location(pages)
    if store.get_file_info(key).type != fs.FileType.Directory:
        raise InputDataError(f"{pages} not found: {missing_hint}")
    try:
        dataset = ds.dataset(key, filesystem=store, format="parquet", partitioning="hive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{pages}: not a readable parquet dataset: {exc}") from None
    if "split" not in dataset.schema.names:
        raise InputDataError(f"{pages}: no split=... partitions found")
    return store, dataset


def read_pages(pages: str | Path, missing_hint: str = "run sessionize first", split: str | None = None) -> pa.Table:
    """The pages table at `pages` (a folder partitioned by split, local or s3://) as one Arrow table with a string
    `split`; with `split`, only that split's files are read."""
    _, dataset = _pages_dataset(pages, missing_hint)
    try:
        table = dataset.to_table(filter=None if split is None else ds.field("split") == split)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{pages}: not a readable parquet dataset: {exc}") from None
    idx = table.schema.get_field_index("split")
    return table.set_column(idx, "split", table.column("split").cast(pa.string()))


def _split_parts(pages_dir: str | Path, split: str):
    """(the pages' URI, its file system, the sorted part files of one split) of validate-pages' output folder."""
    from genrec.data import tables

    uri = tables.locate(pages_dir, "pages", "run validate-pages first")
    store, dataset = _pages_dataset(uri, "run validate-pages first")
    return uri, store, sorted(f.path for f in dataset.get_fragments(filter=ds.field("split") == split))


def iter_split_pages(pages_dir: str | Path, split: str, batch_rows: int = 65_536):
    """One split of validate-pages' output folder as pandas frames of at most `batch_rows` pages, part file by part
    file and row group by row group: memory holds a batch, not the split. The order is the files' order, not time
    order; a damaged part raises InputDataError naming it."""
    uri, store, parts = _split_parts(pages_dir, split)
    for part in parts:
        try:
            with store.open_input_file(part) as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                    if "split" in batch.schema.names:  # a column, not a partition: keep the split's rows
                        batch = batch.filter(pc.equal(batch.column("split").cast(pa.string()), split))
                    yield batch.to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{uri} ({part.rsplit('/', 1)[-1]}): not a readable parquet file: {exc}") from None


def read_split_pages(pages_dir: str | Path, split: str):
    """One split of validate-pages' output folder as pandas, in time order."""
    from genrec.data import tables

    hint = "run validate-pages first"
    table = read_pages(tables.locate(pages_dir, "pages", hint), hint, split).to_pandas()
    return table.sort_values(["page_start", "page_id"], kind="stable").reset_index(drop=True)


def split_row_groups(pages_dir: str | Path, split: str) -> tuple[str, list]:
    """(the pages' URI, the parquet row groups of one split's part files as page_stream.RowGroup), from the files'
    footers: no page is read. The unit train-sft's stream shards by rank and data-loader worker."""
    from genrec.data.page_stream import RowGroup

    uri, store, parts = _split_parts(pages_dir, split)
    groups = []
    for part in parts:
        try:
            with store.open_input_file(part) as f:
                meta = pq.ParquetFile(f).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{uri} ({part.rsplit('/', 1)[-1]}): not a readable parquet file: {exc}") from None
        groups += [RowGroup(part, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return uri, groups


def read_row_group(uri: str, group, split: str, columns: list[str] | None = None):
    """One row group (split_row_groups) of the pages at `uri` as pandas: its rows of `split` (a folder made by hand
    may hold split as a column), only `columns` when given."""
    store, _ = location(uri)
    try:
        with store.open_input_file(group.path) as f:
            file = pq.ParquetFile(f)
            has_split = "split" in file.schema_arrow.names
            wanted = None if columns is None else list(columns) + (["split"] if has_split else [])
            table = file.read_row_group(group.index, columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{uri} ({group.path.rsplit('/', 1)[-1]}): not a readable parquet file: {exc}") from None
    if has_split:
        table = table.filter(pc.equal(table.column("split").cast(pa.string()), split))
        table = table.drop_columns(["split"]) if columns is not None else table
    return table.to_pandas()
