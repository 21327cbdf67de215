"""Shared fixtures. Spark and an MLflow server start once per test session, not per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real MLflow tracking server (sqlite store) on 127.0.0.1; its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--default-artifact-root", (root / "artifacts").as_uri(),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        raise RuntimeError("mlflow server did not start in 90 s")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for every Spark test."""
    from genrec.config import SessionizeConfig
    from spark_jobs.sessionize import build_spark

    session = build_spark(SessionizeConfig(master="local[2]", shuffle_partitions=4, driver_memory="2g"), "genrec-tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def make_cfg(tmp_path, mlflow_server):
    """Build a config for a test: tiny simulator, work_dir in tmp_path, tracking to the session's MLflow server."""
    from genrec.config import load_config

    def _make(*overrides: str):
        base = [f"run.work_dir={tmp_path / 'work'}", f"run.tracking_uri={mlflow_server}", "run.experiment=tests",
                "simulator.n_users=150", "simulator.n_items=300", "simulator.days=10"]
        return load_config(None, base + list(overrides))

    return _make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (CI and developer machines have ../shared/data)")
    return SHARED_DATA
