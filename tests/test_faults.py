"""What a cluster does to tasks: killed at any point, a full disk, the tracking server going away.

Every case checks two things: nothing half-made is accepted as finished, and the rerun gives what an uninterrupted
run gives. (Corrupt and truncated input files are in the bad-input corpus, tests/bad_input_corpus.py.)
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

from conftest import STEPS, sft_cmd, sub_env
from genrec import stage_outputs as outputs
from genrec.data import tables
from genrec.errors import InputDataError

SIM = ["simulator.n_users=150", "simulator.n_items=300", "simulator.days=10"]


# -- the output folder protocol ------------------------------------------------------------------------------


def test_an_output_appears_only_when_its_stage_completes(tmp_path):
    out = tmp_path / "out"
    work = outputs.begin(out, "ingest", "run-1", {})
    (work / "events.parquet").write_text("half")
    assert work == tmp_path / "out.partial" and not out.exists()
    with pytest.raises(InputDataError, match=r"input raw .* is incomplete: ingest started writing it \(pipeline run run-1\)"):
        outputs.require_complete(out, "raw")  # the output is missing, its work folder says why
    with pytest.raises(InputDataError, match="is incomplete"):
        outputs.require_complete(work, "raw")  # a work folder is never an input
    assert outputs.complete(work) == out
    assert not work.exists() and (out / outputs.DONE).exists() and not (out / outputs.MARKER).exists()
    assert json.loads((out / outputs.DONE).read_text())["stage"] == "ingest"
    outputs.require_complete(out, "raw")
    hand_made = tmp_path / "mine"
    hand_made.mkdir()
    outputs.require_complete(hand_made, "raw")  # a folder made by hand or another tool: accepted as it is


def test_a_failed_rerun_leaves_the_finished_output_and_drops_the_killed_attempts_files(tmp_path):
    out = tmp_path / "out"
    outputs.complete(outputs.begin(out, "train-sft", "run-1", {}))
    (out / "model.bin").write_text("v1")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "latest").write_text("step-25")
    work = outputs.begin(out, "train-sft", "run-2", {})  # a rerun: it resumes from the finished run's checkpoints
    assert (work / "checkpoints" / "latest").read_text() == "step-25"
    (work / "stale.txt").write_text("from the attempt that will be killed")
    # killed here: the finished output is still there and still accepted
    assert (out / "model.bin").read_text() == "v1"
    outputs.require_complete(out, "model")
    work = outputs.begin(out, "train-sft", "run-3", {})
    assert not (work / "stale.txt").exists() and (work / "checkpoints" / "latest").exists()
    (work / "model.bin").write_text("v3")
    outputs.complete(work)
    assert (out / "model.bin").read_text() == "v3" and not (out / "stale.txt").exists()
    # a completion killed between its two renames leaves the old output aside: the next begin removes it
    (tmp_path / "out.replaced").mkdir()
    outputs.begin(out, "train-sft", "run-4", {})
    assert not (tmp_path / "out.replaced").exists()


# -- kill -9 at several points, then rerun ---------------------------------------------------------------------


def _kill_when(cmd: list[str], ready: Path, env: dict, timeout_s: float = 300) -> None:
    """Start a stage and kill its whole process group (as a node kills a pod) once `ready` exists."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout_s
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the stage ended before {ready.name} appeared"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "genrec.cli", *args, "run.experiment=tests", *SIM]


def _table(path: Path, by: str):
    return pq.read_table(path).sort_by(by)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mlflow_server, spark):
    """Ingest, validate-events and sessionize uninterrupted."""
    from genrec.config import load_config
    from genrec.stages.ingest import run_ingest
    from genrec.stages.sessionize import run_sessionize
    from genrec.stages.validate_events import run_validate_events

    root = tmp_path_factory.mktemp("reference")
    cfg = load_config(None, [f"run.work_dir={root}", "run.experiment=tests", *SIM])
    run_ingest(cfg, root / "raw", "ref")
    run_validate_events(cfg, root / "raw", root / "validated", "ref")
    run_sessionize(cfg, root / "validated", root / "sessionized", "ref", spark=spark)
    return cfg, root


def _killed(tmp_path, stage: str, point: str) -> Path:
    """Where a stage run by _cli with --pipeline-run-id killed writes `point`: its output folder's work folder for
    small files, its data folder (run.data_root) for tables."""
    return tmp_path / "data" / "killed" / stage / point


@pytest.mark.parametrize("point", ["ground_truth.npz", "events.parquet/part-00000.parquet"])
def test_ingest_killed_then_rerun(point, reference, tmp_path):
    from genrec.stages.ingest import run_ingest

    cfg, ref = reference
    out = tmp_path / "raw"
    _kill_when(_cli("ingest", "--out", str(out), f"run.work_dir={tmp_path}", "--pipeline-run-id", "killed"),
               _killed(tmp_path, "ingest", point), sub_env(tmp_path))
    with pytest.raises(InputDataError, match="is incomplete: ingest started writing it"):
        outputs.require_complete(out, "raw")
    run_ingest(cfg, out, "rerun")
    for name in ("events.parquet", "items.parquet"):
        key = "item_id" if name == "items.parquet" else "event_id"
        assert _table(tables.locate(out, name, ""), key).equals(_table(tables.locate(ref / "raw", name, ""), key))


@pytest.mark.parametrize("point", ["gx", "quarantine/items.parquet"])
def test_validate_events_killed_then_rerun(point, reference, tmp_path):
    from genrec.stages.validate_events import run_validate_events

    cfg, ref = reference
    out = tmp_path / "validated"
    ready = tmp_path / "validated.partial" / point if point == "gx" else _killed(tmp_path, "validate-events", point)
    _kill_when(_cli("validate-events", "--input", str(ref / "raw"), "--out", str(out), f"run.work_dir={tmp_path}",
                    "--pipeline-run-id", "killed"), ready, sub_env(tmp_path))
    assert not out.exists()
    run_validate_events(cfg, ref / "raw", out, "rerun")
    assert _table(tables.locate(out, "events.parquet", ""), "event_id").equals(
        _table(tables.locate(ref / "validated", "events.parquet", ""), "event_id"))
    assert json.loads((out / "report.json").read_text())["tables"] == \
        json.loads((ref / "validated" / "report.json").read_text())["tables"]


def test_sessionize_killed_mid_write_then_rerun(reference, tmp_path, spark):
    from genrec.stages.sessionize import run_sessionize

    cfg, ref = reference
    out = tmp_path / "sessionized"
    _kill_when(_cli("sessionize", "--input", str(ref / "validated"), "--out", str(out), f"run.work_dir={tmp_path}",
                    "--pipeline-run-id", "killed"), _killed(tmp_path, "sessionize", "pages"), sub_env(tmp_path))
    with pytest.raises(InputDataError, match="is incomplete: sessionize started writing it"):
        outputs.require_complete(out, "sessionized")
    run_sessionize(cfg, ref / "validated", out, "rerun", spark=spark)
    from genrec.data.io import read_pages

    a, b = (read_pages(tables.locate(d, "pages", "")).sort_by("page_id") for d in (out, ref / "sessionized"))
    assert a.num_rows == b.num_rows > 0 and a.select(sorted(a.column_names)).equals(b.select(sorted(b.column_names)))


# -- a full disk while writing a checkpoint ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs: a disk that can be filled. Needs root (CI runs as root); skips where mounting is refused."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the full-disk case needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_while_checkpointing_fails_clearly_and_the_previous_checkpoint_resumes(
        sft_data, trained, small_disk, tmp_path, mlflow_server):
    args = [*STEPS, f"run.checkpoint_root={small_disk}", "--pipeline-run-id", "disk-1"]
    ckpts = small_disk / "disk-1" / "train-sft"
    proc = subprocess.Popen(sft_cmd(sft_data, tmp_path / "out", mlflow_server, *args), env=sub_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (ckpts / "latest").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)  # hold it while the disk fills, so the next checkpoint is the one that fails
    first = (ckpts / "latest").read_text().strip()
    filler = _fill(small_disk)
    proc.send_signal(signal.SIGCONT)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2, log[-3000:]
    assert "Traceback" not in log and "could not write checkpoint step-" in log, log[-3000:]
    assert f"the previous checkpoint ({first}) is intact" in log and "rerun to resume" in log
    assert (ckpts / "latest").read_text().strip() == first
    assert not (tmp_path / "out").exists()
    filler.unlink()  # space again: the rerun resumes from the checkpoint before the failure
    rerun = subprocess.run(sft_cmd(sft_data, tmp_path / "out", mlflow_server, *args), env=sub_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["resumed_from_step"] == int(first.split("-")[1]) and report["steps"] == 300
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (trained, tmp_path / "out"))
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


# -- the tracking server goes away mid-stage ---------------------------------------------------------------------


def test_the_server_gone_while_registering_fails_in_seconds_and_registers_nothing_half(tmp_path, monkeypatch, make_cfg,
                                                                                         sft_data):
    """The server dies as gate-and-register starts uploading the model; the rerun, with the server back, registers
    the model once."""
    import mlflow
    from e2e import free_port, mlflow_server

    from genrec import tracking
    from genrec.model.genrec_model import build_model
    from genrec.model.vocab import SidMap
    from genrec.registry import mlflow_registry as reg
    from genrec.stages.gate_and_register import run_gate_and_register

    sid_map = SidMap.load(sft_data / "sids")
    model = build_model("tiny", "", sid_map.sizes, True, sid_map.fingerprint()).save(tmp_path / "model")
    metrics = tmp_path / "eval"
    metrics.mkdir()
    (metrics / "metrics_valid.json").write_text(json.dumps({"genrec": {"hr@10": 0.3, "har": 0.0},
                                                            "popularity": {"hr@10": 0.1}}))
    cfg = make_cfg("registry.model_name=genrec-server-gone", "registry.top_k=5", "model.max_history=20")
    port, store = free_port(), tmp_path / "server"
    with mlflow_server(store, proxied_artifacts=True, port=port) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        server = next(pid for pid, args in _children(os.getpid()) if f"--port {port}" in args)
        original = reg.log_and_register

        def server_dies(*args, **kwargs):
            for pid in [server, *_descendants(server)]:  # the server and its workers, as when its pod is gone
                os.kill(pid, signal.SIGKILL)
            return original(*args, **kwargs)

        monkeypatch.setattr(reg, "log_and_register", server_dies)
        t0 = time.time()
        with pytest.raises(tracking.TrackingError, match="lost the MLflow server"):
            run_gate_and_register(cfg, metrics, model, sft_data / "sids", tmp_path / "gate", "gone-1")
        assert time.time() - t0 < 60
        monkeypatch.setattr(reg, "log_and_register", original)
    assert not (tmp_path / "gate").exists()
    with mlflow_server(store, proxied_artifacts=True, port=port) as uri:  # the server is back, same store
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        client = mlflow.MlflowClient(uri)
        assert client.search_model_versions("name='genrec-server-gone'") == []  # nothing registered by the failure
        result = run_gate_and_register(cfg, metrics, model, sft_data / "sids", tmp_path / "gate", "gone-2")
        versions = client.search_model_versions("name='genrec-server-gone'")
        assert result["new_version"] and [v.version for v in versions] == ["1"]
        assert result["champion_version"] == "1"


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, full command line) of a process's children (from /proc: `ps` may cut long command lines)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    found = []
    for child in (int(p) for p in out.split()):
        try:
            found.append((child, Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except OSError:  # it ended meanwhile
            pass
    return found


def _descendants(pid: int) -> list[int]:
    kids = [child for child, _ in _children(pid)]
    return kids + [d for k in kids for d in _descendants(k)]
