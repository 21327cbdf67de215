"""Shared fixtures. Spark and an MLflow server start once per test session, not per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docker"))
from e2e import mlflow_server as mlflow_server_at  # noqa: E402  (docker/e2e.py: the same server make e2e-docker starts)

SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real MLflow tracking server (sqlite store, artifacts on this machine's disk) on 127.0.0.1; its URI.

    The tracking server is never a config key: from the first test that asks for this one, MLFLOW_TRACKING_URI names
    it for the rest of the session (this process and its subprocesses), as a user's shell would."""
    with mlflow_server_at(tmp_path_factory.mktemp("mlflow"), proxied_artifacts=False) as uri:
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            yield uri
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for every Spark test."""
    from genrec.config import SparkSettings
    from genrec.spark.session import build_spark

    session = build_spark(SparkSettings(master="local[2]", shuffle_partitions=4, driver_memory="2g"), "genrec-tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def make_cfg(tmp_path, mlflow_server):
    """Build a config for a test: tiny simulator, work_dir in tmp_path, tracking to the session's MLflow server."""
    from genrec.config import load_config

    def _make(*overrides: str):
        base = [f"run.work_dir={tmp_path / 'work'}", "run.experiment=tests",
                "simulator.n_users=150", "simulator.n_items=300", "simulator.days=10"]
        return load_config(None, base + list(overrides))

    return _make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (CI and developer machines have ../shared/data)")
    return SHARED_DATA


# SFT on a tiny hand-made catalog (tests/test_train.py, test_align_stage.py): the next item is the last + 1.
N_ITEMS = 64


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory):
    """pages/ (train, then one validation and one test page per user) and sids/ for 64 items; every user walks the catalog: the next item is the last + 1."""
    root = tmp_path_factory.mktemp("sftdata")
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        step, pos, seen = 1, int(rng.integers(N_ITEMS)), []
        for p in range(12):
            nxt = (pos + step) % N_ITEMS
            rows.append({"page_id": f"u{u}p{p}", "user_id": u, "session_id": f"u{u}",
                         "page_start": pd.Timestamp("2026-10-01", tz="UTC") + pd.Timedelta(hours=p),
                         "n_events": 4, "history_items": list(seen[-20:]), "history_ts": [], "history_intensity": [],
                         "ordered_items": [], "carted_items": [], "clicked_items": [nxt],
                         "exposed_items": [int(x) for x in rng.choice(N_ITEMS, 3, replace=False) if x != nxt],
                         "split": "test" if p == 11 else "valid" if p == 10 else "train"})
            seen.append(nxt)
            pos = nxt
    (root / "pages" / "pages").mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False), root / "pages" / "pages" / "part-0.parquet")
    (root / "sids").mkdir()
    codes = np.stack([np.arange(N_ITEMS) // 16, (np.arange(N_ITEMS) // 4) % 4, np.arange(N_ITEMS) % 4], axis=1)
    pq.write_table(pa.table({"item_id": np.arange(N_ITEMS), "s1": codes[:, 0], "s2": codes[:, 1], "s3": codes[:, 2]}),
                   root / "sids" / "sid_table.parquet")
    np.savez(root / "sids" / "codebooks.npz", level1=np.zeros((4, 2)), level2=np.zeros((4, 2)), level3=np.zeros((4, 2)))
    return root


def sft_cmd(data, out, mlflow_server, *extra, launcher=None):
    base = launcher or [sys.executable, "-m", "genrec.cli"]
    return base + ["train-sft", "--pages", str(data / "pages"), "--sids", str(data / "sids"), "--out", str(out),
                   "model.size=tiny", "sft.micro_batch_size=8",
                   "run.experiment=tests", *extra]


def sub_env(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    return env


# dropout on: a resumed run must also replay the dropout masks (the checkpoint holds the RNG state)
STEPS = ["model.dropout=0.1", "sft.max_steps=300", "sft.checkpoint_every=25", "sft.log_every=25", "sft.target_types=[click]", "sft.lr=3e-3"]


@pytest.fixture(scope="session")
def trained(sft_data, tmp_path_factory, mlflow_server):
    """An uninterrupted 300-step run of the CLI."""
    out = tmp_path_factory.mktemp("whole")
    whole = subprocess.run(sft_cmd(sft_data, out, mlflow_server, *STEPS), env=sub_env(out), capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    return out




def kill_at_first_checkpoint(cmd: list[str], ckpt_dir: Path, env: dict) -> None:
    """Start a training command and SIGKILL it as soon as it has written its first resumable checkpoint."""
    import signal

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (ckpt_dir / "latest").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """moto's S3 server on 127.0.0.1 with the bucket genrec-data; AWS_* point at it for this test."""
    sys.path.insert(0, str(REPO / "mlflow"))
    import boto3
    import local_stack

    port = local_stack.free_port()
    pid = local_stack.start_moto(tmp_path, port)
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    client.create_bucket(Bucket="genrec-data")
    yield client
    os.killpg(pid, signal.SIGTERM)
