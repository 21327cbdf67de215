"""The pipeline in its containers: the CPU image built by `make image`, every task run by kfp.local's DockerRunner,
tracking to the team's server on 127.0.0.1 (mlflow/: the server image over PostgreSQL and moto's S3, with logins),
the registered model loaded here.

Starts what it needs: a Docker daemon (../shared/scripts/dockerd-up where none answers; stopped again after), a
Debian base image built locally where public registries are out of reach (../shared/scripts/local-base-image, or
GENREC_BASE_IMAGE), and the image itself from docker/wheelhouse (no package index in the build). Skips only where
no daemon can run at all.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest

from components import DEFAULT_IMAGE

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO.parent / "shared" / "scripts"
import e2e  # noqa: E402  (docker/e2e.py, on sys.path through conftest: the same steps as make e2e-docker)

sys.path.insert(0, str(REPO / "mlflow"))
import local_stack  # noqa: E402  (mlflow/local_stack.py)

pytestmark = [pytest.mark.docker, pytest.mark.slow]
IMAGE = DEFAULT_IMAGE  # what make image tags
MLFLOW_IMAGE = DEFAULT_IMAGE.replace("/genrec:", "/genrec-mlflow:")  # what make mlflow-image tags
LOCAL_BASE = "local/genrec-base:bookworm-py3.11-jre17"
TASKS = ["ingest", "validate-events", "sessionize", "validate-pages", "embed-items", "assign-sids", "train-sft",
         "train-reward", "align", "evaluate", "gate-and-register"]


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


@pytest.fixture(scope="module")
def server(mlflow_image, tmp_path_factory):
    """The team's server: the server image over PostgreSQL and moto's S3 on 127.0.0.1, with logins. For this module,
    this process (and the `genrec run` it starts, and the task containers) logs in as the pipeline user."""
    root = tmp_path_factory.mktemp("stack")
    pg_dir = Path(tempfile.mkdtemp(prefix="genrec-pg-"))
    pg_dir.chmod(0o755)  # as root, PostgreSQL runs as the postgres user, who must reach it
    with local_stack.environment(local_stack.throwaway_secrets()):
        stack = local_stack.up(root, port=local_stack.free_port(), pg_dir=pg_dir / "pg", image=mlflow_image)
        try:
            yield stack.uri
        finally:
            local_stack.down(root, stack)
            shutil.rmtree(pg_dir, ignore_errors=True)


def test_image_runs_as_a_non_root_user(image):
    proc = subprocess.run(["docker", "run", "--rm", "--network", "host", IMAGE, "sh", "-c",
                           "id -u; touch /work/x && touch $HOME/x && echo writable; java -version 2>&1 | head -1"],
                          capture_output=True, text=True, timeout=120)
    uid, writable, java = proc.stdout.strip().splitlines()
    assert (uid, writable) == ("10001", "writable") and "17." in java


def test_the_pipeline_runs_in_its_containers(image, server, tmp_path):
    # the LDPO route here, GRPO-SR in test_pipeline's local run: both alignment routes run end to end
    proc, seconds = e2e.genrec_run("configs/tiny.yaml", tmp_path, server, "--runner", "docker", "--image", IMAGE,
                                   "run.experiment=docker-e2e", "registry.model_name=genrec-docker",
                                   "align.method=ldpo", "align.lr=1e-3")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    # quiet: one line per task as it starts and ends, then the summary; kfp.local's dumps only in the log file
    for task in TASKS:
        assert re.search(rf"^  {task}\s+started$", out, re.M) and re.search(rf"^  {task}\s+success\s+\d+ s$", out, re.M), task
    # the config JSON of each task is in the log only (the summary: task lines, the test and validation tables)
    assert "n_users" not in out and len(out.splitlines()) < 120
    log = Path(re.search(r"^full log:\s+(\S+)$", out, re.M).group(1)).read_text()
    assert log.count("n_users") == len(TASKS) + 1  # every task and the exit task (finish-run) get the config
    assert re.search(r"^\| genrec \| [0-9.]+ \|", out, re.M)
    assert re.search(r"^registered: models:/genrec-docker/1 \(new version\); champion: 1", out, re.M)

    client = mlflow.MlflowClient(tracking_uri=server)
    runs = client.search_runs([client.get_experiment_by_name("docker-e2e").experiment_id])
    parent = next(r for r in runs if r.data.tags["genrec.stage"] == "pipeline")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 11
    for child in children:
        assert child.info.status == "FINISHED"
        # the stage ran inside the image: its code is the image's installed genrec, at the image's commit
        assert child.data.tags["mlflow.source.name"].startswith("/opt/venv/"), child.data.tags["mlflow.source.name"]
        assert child.data.tags["genrec.git_commit"] == image
    # artifacts went through the server's proxy, not to a path of this machine
    sft = next(c for c in children if c.data.tags["genrec.stage"] == "train-sft")
    assert sft.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "model/model.safetensors" in {a.path for a in client.list_artifacts(sft.info.run_id, "model")}
    align = next(c for c in children if c.data.tags["genrec.stage"] == "align")
    assert {"align/loss_ntp", "align/loss_ldpo", "align/pair_accuracy"} <= set(align.data.metrics)
    assert "align/reward_mean" not in align.data.metrics

    predicted = e2e.load_champion(server, "genrec-docker", e2e.validated_test_pages(tmp_path / "kfp"))
    assert len(predicted) == 3 and all(len(items) == 10 for items in predicted["items"])


def test_a_failing_task_fails_the_run_with_its_own_error(image, server, tmp_path):
    # every event lies in the future: validate-events quarantines them all and stops, inside its container
    proc, _ = e2e.genrec_run("configs/tiny.yaml", tmp_path, server, "--runner", "docker", "--image", IMAGE,
                             "run.experiment=docker-e2e-fail", "simulator.start_date=2031-01-01")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^  ingest\s+success", proc.stdout, re.M)
    assert re.search(r"^  validate-events\s+failed", proc.stdout, re.M)
    assert "sessionize" not in proc.stdout  # kfp.local stopped: the next task never started
    assert "task validate-events failed; the last lines of its log:" in proc.stderr
    assert "ValidationFailed" in proc.stderr and "Traceback" not in proc.stdout
    client = mlflow.MlflowClient(tracking_uri=server)
    runs = client.search_runs([client.get_experiment_by_name("docker-e2e-fail").experiment_id])
    assert {r.data.tags["genrec.stage"]: r.info.status for r in runs} == {"pipeline": "FAILED", "ingest": "FINISHED",
                                                                         "validate-events": "FAILED"}


def test_docker_runner_refuses_a_store_the_containers_cannot_reach(tmp_path):
    proc, _ = e2e.genrec_run("configs/tiny.yaml", tmp_path, "", "--runner", "docker")
    assert proc.returncode == 2 and "--runner docker needs an MLflow server" in proc.stderr
    assert "Traceback" not in proc.stderr
