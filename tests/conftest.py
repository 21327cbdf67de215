"""Shared fixtures. Spark and an MLflow server start once per test session, not per test."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
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
import e2e  # noqa: E402  (docker/e2e.py: the same steps as make e2e-docker)
from e2e import mlflow_server as mlflow_server_at  # noqa: E402  (the same server make e2e-docker starts)
from team_stack import EXPERIMENT, MODEL, TeamRun, TeamStack, client_env, local_stack  # noqa: E402

from components import DEFAULT_IMAGE  # noqa: E402

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


# ---- the images and the team's tracking server (test_docker, test_tracking_server) --------------------------------

SCRIPTS = REPO.parent / "shared" / "scripts"
IMAGE = DEFAULT_IMAGE  # what make image tags
MLFLOW_IMAGE = DEFAULT_IMAGE.replace("/genrec:", "/genrec-mlflow:")  # what make mlflow-image tags
LOCAL_BASE = "local/genrec-base:bookworm-py3.11-jre17"


def _docker_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def docker_daemon():
    if _docker_answers():
        yield
        return
    if not (SCRIPTS / "dockerd-up").exists():
        pytest.skip("no Docker daemon answers and ../shared/scripts/dockerd-up is not here to start one")
    up = subprocess.run([str(SCRIPTS / "dockerd-up")], capture_output=True, text=True, timeout=600)
    if up.returncode != 0 or not _docker_answers():
        pytest.skip(f"no Docker daemon can run here: {(up.stdout + up.stderr).strip()[-500:]}")
    yield
    subprocess.run([str(SCRIPTS / "dockerd-down")], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def base_image(docker_daemon) -> str:
    """The base the images build on: GENREC_BASE_IMAGE, a local one where ../shared/scripts can make it, else ''
    (the Dockerfiles' public base)."""
    base = os.environ.get("GENREC_BASE_IMAGE", "")
    if not base and (SCRIPTS / "local-base-image").exists():
        base = LOCAL_BASE
        env = {**os.environ, "EXTRA": "openjdk-17-jre-headless procps"}
        made = subprocess.run([str(SCRIPTS / "local-base-image"), base], env=env, capture_output=True, text=True,
                              timeout=1200)
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    return base


@pytest.fixture(scope="session")
def image(base_image):
    """The CPU image, built (or brought up to date from the layer cache) by `make image`; its git commit."""
    root = subprocess.run(["docker", "info", "-f", "{{.DockerRootDir}}"], capture_output=True, text=True).stdout.strip()
    free_gb = shutil.disk_usage(root).free / 1e9
    # a cold build holds the base, the dependency stage (~4.5 GB), the runtime (~3 GB) and a ~1 GB build context
    assert free_gb > 12, (f"{root} has {free_gb:.1f} GB free; building the image needs about 12: remove old images "
                          "(docker image prune) and try again")
    args = ["make", "image", "OFFLINE=1", f"IMAGE={IMAGE}"] + ([f"BASE_IMAGE={base_image}"] if base_image else [])
    built = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    assert re.search(r"torch 2\.13\.0\+cpu \(cpu.*11 genrec stages import; genrec --help runs", built.stdout), built.stdout[-2000:]
    label = subprocess.run(["docker", "image", "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", IMAGE],
                           capture_output=True, text=True, check=True).stdout
    return re.search(r"^GENREC_GIT_COMMIT=(\S+)$", label, re.M).group(1)


@pytest.fixture(scope="session")
def mlflow_image(base_image, image) -> str:
    """The MLflow server image (make mlflow-image), after the runtime image: it reuses the wheelhouse."""
    args = ["make", "mlflow-image", "OFFLINE=1", f"MLFLOW_IMAGE={MLFLOW_IMAGE}"] + (
        [f"BASE_IMAGE={base_image}"] if base_image else [])
    built = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    assert re.search(r"^mlflow 3\.\d+\.\d+$", built.stdout, re.M), built.stdout[-2000:]
    return MLFLOW_IMAGE


@pytest.fixture(scope="session")
def team_stack(request, tmp_path_factory):
    """The team's stack (team_stack.py) with fresh random passwords: the server from its image where a Docker daemon
    can run, else from this Python environment. The secrets stay out of this process's environment."""
    try:
        server_image = request.getfixturevalue("mlflow_image")
    except pytest.skip.Exception as no_docker:
        print(f"\nthe team's server runs from this Python environment: {no_docker}")
        server_image = ""
    try:
        local_stack.pg_bin("initdb")
    except local_stack.StackError as exc:
        pytest.fail(f"{exc} (.ci/run installs it)")
    secrets_env = local_stack.throwaway_secrets()
    root = tmp_path_factory.mktemp("stack")
    pg_dir = Path(tempfile.mkdtemp(prefix="genrec-pg-"))  # as root, PostgreSQL's user must reach it: not under pytest's 0700 tmp
    pg_dir.chmod(0o755)
    with local_stack.environment(secrets_env):
        st = local_stack.up(root, port=local_stack.free_port(), pg_dir=pg_dir / "pg", image=server_image)
    try:
        yield TeamStack(st, secrets_env, server_image)
    finally:
        with local_stack.environment(secrets_env):
            local_stack.down(root, st)
        shutil.rmtree(pg_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def team_run(request, team_stack, tmp_path_factory) -> TeamRun:
    """The tiny pipeline run once against the team's stack, as the pipeline user: in its containers where the server
    runs from its image (the task image built by `make image`), else as subprocesses. The LDPO route (GRPO-SR runs
    in test_pipeline's local run: both alignment routes run end to end)."""
    work = tmp_path_factory.mktemp("team-run")
    commit = request.getfixturevalue("image") if team_stack.server_image else ""
    runner = ["--runner", "docker", "--image", IMAGE] if commit else []
    proc, seconds = e2e.genrec_run("configs/tiny.yaml", work, team_stack.uri, *runner, f"run.experiment={EXPERIMENT}",
                                   f"registry.model_name={MODEL}", "align.method=ldpo", "align.lr=1e-3",
                                   env=client_env(team_stack))
    print(f"\nthe team's tiny run: {'in containers' if commit else 'as subprocesses'}, {seconds:.0f} s")
    return TeamRun(proc, work, seconds, commit)
