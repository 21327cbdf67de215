"""The pipeline in its containers: the CPU image built by `make image`, every task run by kfp.local's DockerRunner,
tracking to the team's server on 127.0.0.1 (mlflow/: the server image over PostgreSQL and moto's S3, with logins),
the registered model loaded here.

Starts what it needs (conftest.py): a Docker daemon (../shared/scripts/dockerd-up where none answers; stopped again
after), a Debian base image built locally where public registries are out of reach (../shared/scripts/local-base-image,
or GENREC_BASE_IMAGE), and the images themselves from docker/wheelhouse (no package index in the build). Skips only
where no daemon can run at all. The run in containers is the session's `team_run`: test_tracking_server checks what it
left in PostgreSQL and the bucket.
"""

import re
import subprocess
from pathlib import Path

import mlflow
import pytest

import e2e  # noqa: E402  (docker/e2e.py, on sys.path through conftest: the same steps as make e2e-docker)
from conftest import IMAGE
from team_stack import EXPERIMENT, MODEL, TASKS, client_env, logged_in

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def run_in_containers(team_run):
    if not team_run.in_containers:
        pytest.skip("no Docker daemon here: the team's run ran as subprocesses")
    return team_run


def test_image_runs_as_a_non_root_user(image):
    proc = subprocess.run(["docker", "run", "--rm", "--network", "host", IMAGE, "sh", "-c",
                           "id -u; touch /work/x && touch $HOME/x && echo writable; java -version 2>&1 | head -1"],
                          capture_output=True, text=True, timeout=120)
    uid, writable, java = proc.stdout.strip().splitlines()
    assert (uid, writable) == ("10001", "writable") and "17." in java


def test_the_pipeline_runs_in_its_containers(run_in_containers, team_stack):
    proc, out = run_in_containers.proc, run_in_containers.proc.stdout
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # quiet: one line per task as it starts and ends, then the summary; kfp.local's dumps only in the log file
    for task in TASKS:
        assert re.search(rf"^  {task}\s+started$", out, re.M) and re.search(rf"^  {task}\s+success\s+\d+ s$", out, re.M), task
    # the config JSON of each task is in the log only (the summary: task lines, the test and validation tables)
    assert "n_users" not in out and len(out.splitlines()) < 120
    log = Path(re.search(r"^full log:\s+(\S+)$", out, re.M).group(1)).read_text()
    assert log.count("n_users") == len(TASKS) + 1  # every task and the exit task (finish-run) get the config
    assert re.search(r"^\| genrec \| [0-9.]+ \|", out, re.M)
    assert re.search(rf"^registered: models:/{MODEL}/1 \(new version\); champion: 1", out, re.M)

    env = client_env(team_stack)
    with logged_in(env):
        client = mlflow.MlflowClient(tracking_uri=team_stack.uri)
        runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
        parent = next(r for r in runs if r.data.tags["genrec.stage"] == "pipeline")
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert parent.info.status == "FINISHED" and len(children) == 11
        for child in children:
            assert child.info.status == "FINISHED"
            # the stage ran inside the image: its code is the image's installed genrec, at the image's commit
            assert child.data.tags["mlflow.source.name"].startswith("/opt/venv/"), child.data.tags["mlflow.source.name"]
            assert child.data.tags["genrec.git_commit"] == run_in_containers.image_commit
        # artifacts went through the server's proxy, not to a path of this machine
        sft = next(c for c in children if c.data.tags["genrec.stage"] == "train-sft")
        assert sft.info.artifact_uri.startswith("mlflow-artifacts:")
        assert "model/model.safetensors" in {a.path for a in client.list_artifacts(sft.info.run_id, "model")}
        align = next(c for c in children if c.data.tags["genrec.stage"] == "align")
        assert {"align/loss_ntp", "align/loss_ldpo", "align/pair_accuracy"} <= set(align.data.metrics)
        assert "align/reward_mean" not in align.data.metrics

        predicted = e2e.load_champion(team_stack.uri, MODEL, e2e.validated_test_pages(run_in_containers.work / "kfp"))
    assert len(predicted) == 3 and all(len(items) == 10 for items in predicted["items"])


def test_a_failing_task_fails_the_run_with_its_own_error(run_in_containers, team_stack, tmp_path):
    # every event lies in the future: validate-events quarantines them all and stops, inside its container
    env = client_env(team_stack)
    proc, _ = e2e.genrec_run("configs/tiny.yaml", tmp_path, team_stack.uri, "--runner", "docker", "--image", IMAGE,
                             "run.experiment=docker-e2e-fail", "simulator.start_date=2031-01-01", env=env)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^  ingest\s+success", proc.stdout, re.M)
    assert re.search(r"^  validate-events\s+failed", proc.stdout, re.M)
    assert "sessionize" not in proc.stdout  # kfp.local stopped: the next task never started
    assert "task validate-events failed; the last lines of its log:" in proc.stderr
    assert "ValidationFailed" in proc.stderr and "Traceback" not in proc.stdout
    with logged_in(env):
        client = mlflow.MlflowClient(tracking_uri=team_stack.uri)
        runs = client.search_runs([client.get_experiment_by_name("docker-e2e-fail").experiment_id])
    assert {r.data.tags["genrec.stage"]: r.info.status for r in runs} == {"pipeline": "FAILED", "ingest": "FINISHED",
                                                                         "validate-events": "FAILED"}


def test_docker_runner_refuses_a_store_the_containers_cannot_reach(tmp_path):
    proc, _ = e2e.genrec_run("configs/tiny.yaml", tmp_path, "", "--runner", "docker")
    assert proc.returncode == 2 and "--runner docker needs an MLflow server" in proc.stderr
    assert "Traceback" not in proc.stderr
