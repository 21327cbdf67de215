"""A stage's output folder appears only when the stage has finished: it writes elsewhere and renames at the end.

A stage writes its files as it goes (checkpoints, reports, Data Docs). If it then fails (its data, its code, the
tracking server going away mid-run) or is killed at any point, a folder with half its files must not look like an
output. So:

- `begin` checks the inputs and returns a work folder beside the output, `<out>.partial/`, marked incomplete. A work
  folder left by a killed attempt is reused for its `checkpoints/` only (so training resumes); everything else in it
  is deleted, so no file of the killed attempt reaches the new output.
- `complete` writes the completion marker `_GENREC_COMPLETE.json` into the work folder and renames it to `<out>`
  (a finished output already there is moved aside first and deleted after), so `<out>` is never half-made.
- Every stage calls `require_complete` on its inputs: a `.partial` folder, a folder still marked incomplete, or a
  missing folder whose work folder exists is refused with the stage to rerun. Folders made by hand or by other
  tools (no marker at all) are accepted as they are.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from genrec.errors import InputDataError

MARKER = "_GENREC_INCOMPLETE.json"
DONE = "_GENREC_COMPLETE.json"
PARTIAL = ".partial"
_ASIDE = ".replaced"
KEEP_ON_RESUME = ("checkpoints",)


def work_dir(out_dir: str | Path) -> Path:
    """Where the stage writes `out_dir` until it completes."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + PARTIAL)


def final_path(path: str | Path) -> Path:
    """A path inside a work folder, as it will read once the stage completed (for paths recorded in reports)."""
    path = Path(path)
    parts = list(path.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].endswith(PARTIAL) and (Path(*parts[: i + 1]) / MARKER).exists():
            parts[i] = parts[i][: -len(PARTIAL)]
            return Path(*parts)
    return path


def _marker_info(folder: Path) -> dict:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def require_complete(path: str | Path, name: str) -> None:
    """Refuse an input folder whose stage did not finish."""
    path = Path(path)
    unfinished = None
    if path.name.endswith(PARTIAL):
        unfinished = path
    elif (path / MARKER).exists():
        unfinished = path
    elif not path.exists() and work_dir(path).exists():
        unfinished = work_dir(path)
    if unfinished is None:
        return
    info = _marker_info(unfinished)
    stage = info.get("stage", "the stage that writes it")
    raise InputDataError(f"input {name} ({path}) is incomplete: {stage} started writing it (pipeline run "
                         f"{info.get('pipeline_run_id', '?')}) and did not finish (it failed or was stopped; see its "
                         f"error or MLflow run): rerun {stage}")


def begin(out_dir: str | Path, stage: str, pipeline_run_id: str, inputs: dict[str, str | Path | None],
          rank: int = 0) -> Path:
    """Check the inputs and prepare the work folder; returns it. The stage writes there, then calls `complete`.

    With several processes (torchrun) every rank gets the same folder; only rank 0 prepares it, and the caller
    must hold the other ranks (a barrier) until it has.
    """
    for name, path in inputs.items():
        if path is not None:
            require_complete(path, name)
    out_dir = Path(out_dir)
    work = work_dir(out_dir)
    if rank != 0:
        return work
    aside = out_dir.with_name(out_dir.name + _ASIDE)
    if aside.exists():  # a completion that was killed between its two renames
        shutil.rmtree(aside)
    if work.exists():  # a killed attempt: keep what lets training resume, drop the rest
        for child in work.iterdir():
            if child.name in KEEP_ON_RESUME:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    work.mkdir(parents=True, exist_ok=True)
    for keep in KEEP_ON_RESUME:  # a rerun of a finished stage resumes from its checkpoints, as before
        if (out_dir / keep).is_dir() and not (work / keep).exists():
            os.replace(out_dir / keep, work / keep)
    (work / MARKER).write_text(json.dumps({"stage": stage, "pipeline_run_id": pipeline_run_id,
                                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    return work


def complete(work: str | Path) -> Path:
    """The stage finished: mark its work folder complete and rename it to the output folder; returns that."""
    work = Path(work)
    if not work.name.endswith(PARTIAL):
        raise ValueError(f"{work} is not a work folder from stage_outputs.begin")
    out_dir = work.with_name(work.name[: -len(PARTIAL)])
    info = _marker_info(work)
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (work / DONE).write_text(json.dumps(info))
    (work / MARKER).unlink(missing_ok=True)
    if out_dir.exists():
        aside = out_dir.with_name(out_dir.name + _ASIDE)
        os.replace(out_dir, aside)
        os.replace(work, out_dir)
        shutil.rmtree(aside)
    else:
        os.replace(work, out_dir)
    return out_dir


def checkpoint_dir(checkpoint_root: str, out_dir: Path, stage: str, pipeline_run_id: str) -> Path:
    """Where a training stage keeps its resumable checkpoints: <work folder>/checkpoints (it moves with the output
    when the stage completes), or, with run.checkpoint_root, <root>/<pipeline run id>/<stage>. The second survives
    the task: KFP gives a retried task a fresh output folder but the same run id, so the retry finds the checkpoints
    of the attempt before it."""
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
