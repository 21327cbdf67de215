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


def _where(location: str | Path):
    """(filesystem, path in it) of a local path or an s3:// / s3a:// location."""
    from pyarrow import fs

    if is_object_store(location):
        return object_store(), str(location).split("://", 1)[1].rstrip("/")
    return fs.LocalFileSystem(), str(Path(location).resolve())


def copy_tree(source: str | Path, target: str | Path) -> int:
    """Copy a file or a folder between this machine and the object store, either way; returns the files copied. A
    source that is not there raises InputDataError naming it."""
    from pyarrow import fs

    src_fs, src = _where(source)
    dst_fs, dst = _where(target)
    info = src_fs.get_file_info(src)
    if info.type == fs.FileType.NotFound:
        raise InputDataError(f"{source} not found")
    files = 1 if info.type == fs.FileType.File else sum(
        f.type == fs.FileType.File for f in src_fs.get_file_info(fs.FileSelector(src, recursive=True)))
    # A local target's folder may not exist yet (Arrow creates it for a folder copy, not for one file).
    if not is_object_store(target):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
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
    """Read one parquet file, local or s3://; a missing or unreadable file raises InputDataError naming it."""
    if is_object_store(path):
        from pyarrow import fs

        store, key = _where(path)
        try:
            if store.get_file_info(key).type != fs.FileType.File:
                raise InputDataError(f"{path} not found ({missing_hint})")
            return pq.read_table(key, filesystem=store)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{path}: not readable: {exc}") from None
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path} not found ({missing_hint})")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{path}: not a readable parquet file: {exc}") from None


def read_pages(pages_dir: str | Path, missing_hint: str = "run sessionize first") -> pa.Table:
    """All pages of a pages/ folder (partitioned by split) as one Arrow table with a string `split`."""
    pages_dir = Path(pages_dir)
    if not pages_dir.is_dir():
        raise InputDataError(f"{pages_dir} not found: {missing_hint}")
    try:
        table = ds.dataset(pages_dir, format="parquet", partitioning="hive").to_table()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{pages_dir}: not a readable parquet dataset: {exc}") from None
    idx = table.schema.get_field_index("split")
    if idx < 0:
        raise InputDataError(f"{pages_dir}: no split=... partitions found")
    return table.set_column(idx, "split", table.column("split").cast(pa.string()))


def read_split_pages(pages_dir: str | Path, split: str):
    """One split of a validated pages folder (`<pages_dir>/pages`) as pandas, in time order."""
    table = read_pages(Path(pages_dir) / "pages", "run validate-pages first")
    table = table.filter(pc.equal(table.column("split"), split)).to_pandas()
    return table.sort_values(["page_start", "page_id"], kind="stable").reset_index(drop=True)
