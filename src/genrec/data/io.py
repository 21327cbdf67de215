"""Reading parquet with errors that name the file and what to do about it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from genrec.errors import InputDataError


def read_parquet(path: Path, missing_hint: str) -> pa.Table:
    """Read one parquet file; a missing or unreadable file raises InputDataError naming it."""
    if not path.is_file():
        raise InputDataError(f"{path} not found ({missing_hint})")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{path}: not a readable parquet file: {exc}") from None
