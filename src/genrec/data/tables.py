"""Large tables between stages: written once under run.data_root, passed to the next stage as a small reference.

A stage writes each table it produces (events, pages, quarantined rows, ...) as parquet under its data folder,
`<data_root>/<pipeline run id>/<stage>/<name>` (a local folder, or s3://... on a cluster), and records a reference
`<name>.ref.json` in its output folder: the table's URI, row count, schema, files and a content hash. The output
folder is what KFP moves between tasks, so it stays small whatever the size of the log; the next stage reads the
table in place.

The content hash covers every part file's path, size and parquet footer (row counts, column statistics, byte
offsets), so a part rewritten, truncated, added or removed after the reference was recorded changes it. It is not a
hash of every byte: that would cost a full read of the table at every stage. A stage refuses a reference whose table
no longer matches it (`locate`), naming what differs.

A folder made by hand (no genrec completion marker) may hold a table in place instead, as `<folder>/<name>` (a
parquet file or a folder of parts): tests and users' own data do that. A stage-made folder without the reference
is refused: its table is elsewhere and nothing says where.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from genrec.data.io import is_object_store, location
from genrec.errors import ConfigError, InputDataError

REF_SUFFIX = ".ref.json"
# Marker of a folder a genrec stage finished (genrec.stage_outputs.DONE, not imported: stage_outputs imports us).
_STAGE_DONE = "_GENREC_COMPLETE.json"


@dataclass
class TableRef:
    """What a stage recorded about a table it wrote: enough for the next stage to find it and check it is intact."""

    name: str
    uri: str
    n_rows: int
    n_files: int
    n_bytes: int
    content_hash: str
    schema: dict[str, str]
    partitioning: list[str] = field(default_factory=list)
    rows_by_partition: dict[str, int] = field(default_factory=dict)
    written_by: str = ""

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def join(base: str | Path, *names: str) -> str:
    """base/name/... for a local path or an s3:// URI (Path() would fold s3://bucket into s3:/bucket)."""
    out = str(base).rstrip("/")
    for name in names:
        out = f"{out}/{name.strip('/')}"
    return out


NO_SHARED_DATA_ROOT = ("run.data_root is not set: on Kubernetes every task runs in its own pod with its own disk, so "
                       "a stage would not find the tables of the stage before it. Set run.data_root to "
                       "s3://bucket/prefix (with cluster.object_store_secret), or to the mount path of a "
                       "ReadWriteMany volume that every task mounts")


def data_root(cfg) -> str:
    """run.data_root, or <work_dir>/data when it is empty (refused inside a Kubernetes pod: not shared)."""
    if not cfg.run.data_root and os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigError(NO_SHARED_DATA_ROOT)
    return cfg.run.data_root or str(Path(cfg.run.work_dir) / "data")


def data_dir(cfg, stage: str, pipeline_run_id: str) -> str:
    """Where `stage` of this pipeline run writes its tables: <data_root>/<pipeline run id>/<stage>."""
    if not pipeline_run_id:
        raise InputDataError("the pipeline run id is empty: the tables of different runs would mix under "
                             "run.data_root")
    return join(data_root(cfg), pipeline_run_id, stage)


def spark_uri(uri: str) -> str:
    """The same location as Spark's Hadoop file systems name it: s3:// becomes s3a://."""
    return "s3a://" + uri[len("s3://"):] if uri.startswith("s3://") else uri


def remove(uri: str) -> None:
    """Delete a table (a file or a folder of parts), local or in the object store; nothing there is fine."""
    from pyarrow import fs

    filesystem, path = location(uri)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.Directory:
        filesystem.delete_dir(path)
    elif info.type == fs.FileType.File:
        filesystem.delete_file(path)


def part_files(uri: str) -> list[tuple[str, int]]:
    """(path relative to uri, size) of the parquet parts of a table, sorted; files named _* or .* are not parts
    (Spark's _SUCCESS and .crc files), as for Arrow's and Spark's readers."""
    from pyarrow import fs

    filesystem, path = location(uri)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        return [("", info.size)]
    if info.type != fs.FileType.Directory:
        raise InputDataError(f"{uri} not found")
    parts = []
    for f in filesystem.get_file_info(fs.FileSelector(path, recursive=True)):
        rel = f.path[len(path):].lstrip("/")
        if f.type == fs.FileType.File and not any(p.startswith(("_", ".")) for p in rel.split("/")):
            parts.append((rel, f.size))
    return sorted(parts)


def _footer(filesystem, path: str, size: int, name: str) -> bytes:
    """The parquet footer of one file: its metadata block and the 8 bytes after it (`name`: the file, for errors)."""
    with filesystem.open_input_file(path) as f:
        if size < 12:
            raise InputDataError(f"{name}: not a readable parquet file: {size} bytes")
        f.seek(size - 8)
        tail = f.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or length > size - 12:
            raise InputDataError(f"{name}: not a readable parquet file: no parquet footer at its end")
        f.seek(size - 8 - length)
        return f.read(length) + tail


def describe(uri: str, name: str, partitioning: tuple[str, ...] | list[str] = (), written_by: str = "") -> TableRef:
    """Read the footers of a table's parts: rows, schema, files, bytes and the content hash."""
    filesystem, root = location(uri)
    parts = part_files(uri)
    digest = hashlib.sha256()
    n_rows, n_bytes, schema, by_partition = 0, 0, None, {}
    for rel, size in parts:
        path = f"{root}/{rel}" if rel else root
        footer = _footer(filesystem, path, size, join(uri, rel) if rel else uri)
        try:
            meta = pq.read_metadata(filesystem.open_input_file(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{join(uri, rel) if rel else uri}: not a readable parquet file: {exc}") from None
        digest.update(f"{rel}\0{size}\0".encode())
        digest.update(hashlib.sha256(footer).digest())
        n_rows += meta.num_rows
        n_bytes += size
        if schema is None:
            schema = meta.schema.to_arrow_schema()
        key = "/".join(p for p in rel.split("/")[:-1] if "=" in p)
        if key:
            by_partition[key] = by_partition.get(key, 0) + meta.num_rows
    fields = {f.name: str(f.type) for f in schema} if schema is not None else {}
    fields.update({col: "string" for col in partitioning})
    return TableRef(name, uri, n_rows, len(parts), n_bytes, digest.hexdigest(), fields, list(partitioning),
                    by_partition, written_by)


def arrow_schema(uri: str) -> pa.Schema:
    """The Arrow schema of a table's first part (its writer's types, before any reader's conversions)."""
    filesystem, root = location(uri)
    parts = part_files(uri)
    if not parts:
        raise InputDataError(f"{uri}: no parquet part in it")
    rel = parts[0][0]
    try:
        with filesystem.open_input_file(f"{root}/{rel}" if rel else root) as f:
            return pq.read_schema(f)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{join(uri, rel) if rel else uri}: not a readable parquet file: {exc}") from None


def ref_path(folder: str | Path, name: str) -> Path:
    return Path(folder) / f"{name}{REF_SUFFIX}"


def record(folder: str | Path, name: str, uri: str, partitioning: tuple[str, ...] | list[str] = (),
           written_by: str = "") -> TableRef:
    """Describe the table at `uri` and write its reference into the stage's output folder as <name>.ref.json."""
    ref = describe(uri, name, partitioning, written_by)
    path = ref_path(folder, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ref.as_json())
    return ref


def forward(source_folder: str | Path, folder: str | Path, name: str) -> TableRef:
    """Pass an input's reference on unchanged (a stage hands a table it did not touch to the stages after it),
    after checking the table still matches it."""
    ref = read_ref(source_folder, name)
    verify(ref, ref_path(source_folder, name))
    path = ref_path(folder, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ref.as_json())
    return ref


def read_ref(folder: str | Path, name: str) -> TableRef:
    path = ref_path(folder, name)
    try:
        return TableRef(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise InputDataError(f"{path}: not a readable table reference: {exc}") from None


def verify(ref: TableRef, where: str | Path) -> None:
    """Refuse a table that no longer matches its reference: missing, rows or parts changed."""
    try:
        now = describe(ref.uri, ref.name, ref.partitioning)
    except InputDataError as exc:
        raise InputDataError(f"{where} names {ref.uri}, which cannot be read now ({exc}): rerun "
                             f"{ref.written_by or 'the stage that wrote it'}") from None
    if now.n_rows != ref.n_rows or now.content_hash != ref.content_hash:
        raise InputDataError(
            f"{where}: the table at {ref.uri} is not the one recorded: it has {now.n_rows:,} rows in {now.n_files} "
            f"files (hash {now.content_hash[:12]}), the reference says {ref.n_rows:,} rows in {ref.n_files} files "
            f"(hash {ref.content_hash[:12]}). Something rewrote it after {ref.written_by or 'its stage'} finished: "
            f"rerun {ref.written_by or 'that stage'}")


def locate(folder: str | Path, name: str, hint: str) -> str:
    """Where table `name` of an input folder is: the checked URI of its reference, or, in a folder made by hand, the
    table in place. `hint` says what to run when it is missing."""
    folder = Path(folder)
    if ref_path(folder, name).is_file():
        ref = read_ref(folder, name)
        verify(ref, ref_path(folder, name))
        return ref.uri
    if (folder / _STAGE_DONE).exists():
        raise InputDataError(f"{folder} has no reference to its table {name} ({ref_path(folder, name).name}): the "
                             f"stage that wrote the folder did not record it ({hint})")
    if (folder / name).exists():
        return str(folder / name)
    raise InputDataError(f"{folder / name} not found ({hint})")


def exists(folder: str | Path, name: str) -> bool:
    """Whether an input folder has table `name` (by reference or in place)."""
    return ref_path(folder, name).is_file() or (Path(folder) / name).exists()


def is_table(uri: str) -> bool:
    """Whether a file or folder is there (a table a stage wrote, or not)."""
    from pyarrow import fs

    filesystem, path = location(uri)
    return filesystem.get_file_info(path).type != fs.FileType.NotFound


def fresh_data_dir(cfg, stage: str, pipeline_run_id: str) -> str:
    """The stage's data folder, emptied: what an earlier attempt of this stage in this pipeline run left there is not
    this attempt's output (a finished earlier attempt's references then no longer match, and are refused)."""
    uri = data_dir(cfg, stage, pipeline_run_id)
    if is_object_store(uri):
        remove(uri)
    else:
        if Path(uri).exists():
            shutil.rmtree(uri)
        os.makedirs(uri, exist_ok=True)
    return uri


class PartWriter:
    """Writes a table batch by batch as parquet parts, <uri>/part-00000.parquet, part-00001.parquet, ..., a new part
    every `rows_per_part` rows: memory holds one batch, whatever the table's size. Local or s3://."""

    def __init__(self, uri: str, rows_per_part: int = 4_000_000, schema: pa.Schema | None = None):
        self.uri, self.rows_per_part, self.schema = uri, rows_per_part, schema
        self.n_rows, self.n_parts = 0, 0
        self._writer, self._in_part = None, 0
        self._fs, self._root = location(uri)
        self._fs.create_dir(self._root, recursive=True)

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if self.schema is None:
            self.schema = data.schema
        elif data.schema != self.schema:
            try:
                data = data.cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                raise InputDataError(f"{self.uri}: a batch does not fit the table's schema ({exc}); first batch: "
                                     f"{self.schema}") from None
        offset = 0
        while offset < data.num_rows:
            if self._writer is None:
                path = f"{self._root}/part-{self.n_parts:05d}.parquet"
                self._writer = pq.ParquetWriter(path, self.schema, filesystem=self._fs)
                self.n_parts += 1
            take = min(data.num_rows - offset, self.rows_per_part - self._in_part)
            self._writer.write_table(data.slice(offset, take))
            offset, self._in_part, self.n_rows = offset + take, self._in_part + take, self.n_rows + take
            if self._in_part >= self.rows_per_part:
                self._writer.close()
                self._writer, self._in_part = None, 0

    def close(self) -> int:
        """Finish the last part; a table that got no row still gets one (empty) part, so that it has a schema."""
        if self._writer is None and self.n_parts == 0 and self.schema is not None:
            pq.write_table(self.schema.empty_table(), f"{self._root}/part-00000.parquet", filesystem=self._fs)
            self.n_parts = 1
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.n_rows


def handoff(folder: str | Path) -> str:
    """What the next stages need of a stage's output folder, as one JSON string: the JSON files at its top (its
    tables' references, manifest, report, completion marker), kilobytes whatever the size of the tables. A KFP task
    passes this as a string parameter, so no task downloads a folder to find a table (its reports and Data Docs stay
    in the task's output artifact, for people)."""
    folder = Path(folder)
    files = {p.name: p.read_text() for p in sorted(folder.glob("*.json"))}
    files.update({f"quarantine/{p.name}": p.read_text() for p in sorted(folder.glob(f"quarantine/*{REF_SUFFIX}"))})
    return json.dumps({"files": files})


def receive(text: str, folder: str | Path) -> Path:
    """Write a handoff (handoff()) into `folder`, which then reads as the stage's output folder; returns it."""
    folder = Path(folder)
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputDataError(f"not a stage's handoff (a JSON object with its files): {exc}") from None
    for name, content in files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputDataError(f"a stage's handoff names the file {name!r} outside its folder")
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    return folder
