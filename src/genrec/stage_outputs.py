"""A stage's output folder is complete only when the stage finished: a marker says otherwise.

A stage writes its files as it goes (checkpoints, reports, Data Docs). If it then fails (its data, its code, or the
tracking server going away mid-run), or is killed, the folder holds a half-written output that looks like a whole one.
`begin` puts a marker file in the folder before the stage writes anything; `complete` removes it when the stage has
finished, tracking included; every stage refuses an input folder that still has the marker. Folders made by hand or by
other tools (no marker) are accepted as they are.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from genrec.errors import InputDataError

MARKER = "_GENREC_INCOMPLETE.json"


def require_complete(path: str | Path, name: str) -> None:
    """Refuse an input folder whose stage did not finish."""
    marker = Path(path) / MARKER
    if marker.exists():
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            info = {}
        stage = info.get("stage", "the stage that writes it")
        raise InputDataError(f"input {name} ({path}) is incomplete: {stage} started writing it (pipeline run "
                             f"{info.get('pipeline_run_id', '?')}) and did not finish (it failed or was stopped; see its "
                             f"error or MLflow run): rerun {stage}")


def begin(out_dir: str | Path, stage: str, pipeline_run_id: str, inputs: dict[str, str | Path | None]) -> Path:
    """Check the inputs, create the output folder and mark it incomplete; returns the folder."""
    for name, path in inputs.items():
        if path is not None:
            require_complete(path, name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text(json.dumps({"stage": stage, "pipeline_run_id": pipeline_run_id,
                                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    return out_dir


def complete(out_dir: str | Path) -> None:
    """The stage finished: its output folder may be used."""
    (Path(out_dir) / MARKER).unlink(missing_ok=True)


def checkpoint_dir(checkpoint_root: str, out_dir: Path, stage: str, pipeline_run_id: str) -> Path:
    """Where a training stage keeps its resumable checkpoints: <out_dir>/checkpoints, or, with run.checkpoint_root,
    <root>/<pipeline run id>/<stage>. The second survives the task: KFP gives a retried task a fresh output folder but
    the same run id, so the retry finds the checkpoints of the attempt before it."""
    if not checkpoint_root:
        return Path(out_dir) / "checkpoints"
    root = Path(checkpoint_root)
    if not root.is_dir():
        raise InputDataError(f"run.checkpoint_root {root} is not a folder (on a cluster: is cluster.checkpoint_pvc "
                             f"mounted there?)")
    if not pipeline_run_id:
        raise InputDataError("run.checkpoint_root is set but the pipeline run id is empty: the checkpoints of "
                             "different runs would mix")
    return root / pipeline_run_id / stage
