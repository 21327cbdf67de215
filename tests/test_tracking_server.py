"""The tracking server as a team runs it (mlflow/local_stack.py): PostgreSQL, an S3-compatible store (moto's server),
`mlflow server` with basic auth and proxied artifacts, all on 127.0.0.1. The tiny pipeline runs against it as the
pipeline user (the session's `team_run`, in containers where Docker can run: see team_stack.py); what it wrote is
checked in PostgreSQL and in the bucket directly, not only through MLflow; no password shows anywhere a user or a
test can look; each way the server can fail gives one clear line in seconds.

Needs PostgreSQL's server programs (Debian: postgresql; .ci/run installs it where missing).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from team_stack import EXPERIMENT, MODEL, REPO, TASKS, client_env, genrec, local_stack, logged_in

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(team_stack):
    return team_stack


@pytest.fixture(scope="module")
def tiny_run(team_run):
    return team_run.proc, team_run.work


def sql(stack, query: str, database: str = "mlflow") -> list[tuple]:
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=stack.stack.pg_port, user=local_stack.DB_USER,
                          password=stack.secrets["PGPASSWORD"], dbname=database) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


def bucket_keys(stack) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.stack.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=stack.secrets["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=stack.secrets["AWS_SECRET_ACCESS_KEY"])
    keys, token = [], None
    while True:
        page = s3.list_objects_v2(Bucket=local_stack.BUCKET, **({"ContinuationToken": token} if token else {}))
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def test_tiny_pipeline_lands_in_postgres_and_the_bucket(stack, tiny_run):
    proc, work = tiny_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Runs, their status and metrics are rows of PostgreSQL's mlflow database.
    runs = sql(stack, "SELECT r.run_uuid, r.status, t.value FROM runs r JOIN experiments e USING (experiment_id) "
                      f"JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'genrec.stage' WHERE e.name = '{EXPERIMENT}'")
    stages = {stage: status for _, status, stage in runs}
    assert stages == {s: "FINISHED" for s in ("pipeline", *TASKS)}
    (n_metrics,) = sql(stack, "SELECT count(*) FROM metrics m JOIN runs r USING (run_uuid) JOIN experiments e "
                              f"USING (experiment_id) WHERE e.name = '{EXPERIMENT}'")[0]
    assert n_metrics > 50
    aliases = dict(sql(stack, f"SELECT alias, version FROM registered_model_aliases WHERE name = '{MODEL}'"))
    assert aliases.get("champion") == 1 and aliases.get("challenger") == 1
    # Artifacts are objects in the bucket, under the experiment's runs: Data Docs, the model, the configs.
    keys = bucket_keys(stack)
    run_ids = {run_id for run_id, _, _ in runs}
    in_runs = [k for k in keys if any(f"/{r}/" in k for r in run_ids)]
    assert any(k.endswith("data_docs/index.html") for k in in_runs), keys[:20]
    assert any(k.endswith("model/MLmodel") or k.endswith("/MLmodel") for k in keys), keys[:20]
    assert sum(k.endswith("config.yaml") for k in in_runs) == len(run_ids)
    # The users and their permissions are in the auth database: the pipeline user manages what it created.
    (exp_id,) = sql(stack, f"SELECT experiment_id FROM experiments WHERE name = '{EXPERIMENT}'")[0]
    perms = sql(stack, "SELECT u.username, p.resource_type, p.resource_pattern, p.permission FROM users u "
                       "JOIN user_role_assignments a ON a.user_id = u.id JOIN role_permissions p ON p.role_id = a.role_id",
                database="mlflow_auth")
    assert ("pipeline", "experiment", str(exp_id), "MANAGE") in perms and ("pipeline", "registered_model", MODEL,
                                                                          "MANAGE") in perms


def test_champion_loads_in_a_fresh_process_with_the_pipeline_login(stack, tiny_run):
    _, work = tiny_run
    from e2e import validated_test_pages

    pages = validated_test_pages(work / "kfp")
    code = ("import sys, json; sys.path.insert(0, 'docker'); from e2e import load_champion; "
            f"out = load_champion({stack.uri!r}, {MODEL!r}, __import__('pathlib').Path({str(pages)!r}), 2); "
            "print(json.dumps([list(map(int, r)) for r in out['items']]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=client_env(stack), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(recs) == 2 and all(len(r) == 10 for r in recs)
    # Without a login the server refuses the same load.
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=client_env(stack, MLFLOW_TRACKING_USERNAME=None, MLFLOW_TRACKING_PASSWORD=None,
                                         MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"))
    assert proc.returncode != 0 and "401" in proc.stderr


def test_no_secret_anywhere(stack, tiny_run, tmp_path):
    import mlflow

    proc, work = tiny_run
    env = stack.secrets
    values = [v for k, v in env.items() if k != "MLFLOW_TRACKING_USERNAME" and k != "AWS_ACCESS_KEY_ID"]
    places: dict[str, str] = {"genrec run's stdout": proc.stdout, "genrec run's stderr": proc.stderr}
    for path in work.rglob("*"):  # the pipeline root: task outputs, kfp-local.log (executor inputs = run parameters)
        if path.is_file() and path.stat().st_size < 50_000_000:
            places[str(path)] = path.read_bytes().decode("utf-8", "replace")
    log = next(work.glob("kfp/*/kfp-local.log")).read_text()
    assert '"config_json"' in log  # the KFP run parameters are in what was searched
    with logged_in(client_env(stack)):
        client = mlflow.MlflowClient(tracking_uri=stack.uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        for run in client.search_runs([exp.experiment_id]):
            places[f"params/tags of {run.info.run_name}"] = json.dumps([run.data.params, run.data.tags])
            local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / run.info.run_id),
                                                        tracking_uri=stack.uri)
            for path in Path(local).rglob("*"):
                if path.is_file():
                    places[f"artifact {path.relative_to(tmp_path)}"] = path.read_bytes().decode("utf-8", "replace")
    yaml_path = tmp_path / "pipeline.yaml"
    compiled = genrec(client_env(stack), "compile", "--out", str(yaml_path))
    assert compiled.returncode == 0, compiled.stderr
    places["compiled YAML"] = yaml_path.read_text()
    assert "MLFLOW_TRACKING_PASSWORD" in places["compiled YAML"]  # the Secret's key is named ...
    dump = subprocess.run([local_stack.pg_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(stack.stack.pg_port), "-U", "mlflow",
                           "mlflow"], env=dict(os.environ, PGPASSWORD=env["PGPASSWORD"]), capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    places["the tracking database (pg_dump)"] = dump.stdout
    assert len(places) > 100
    for where, text in places.items():
        for value in values:
            assert value not in text, f"a secret is in {where}"  # ... its value never


def test_parent_run_is_ended_by_the_pipelines_exit_task(stack, tiny_run, tmp_path):
    import re

    import mlflow

    _, work = tiny_run
    log = re.sub(r"\x1b\[[0-9;]*m", "", next(work.glob("kfp/*/kfp-local.log")).read_text())
    assert "Executing task 'finish-run'" in log and ": FINISHED (pipeline SUCCEEDED" in log
    # As on a cluster: the pipeline runs with no `genrec run` around it to end the parent run; a task fails.
    code = ("import sys; from genrec.config import load_config; from pipelines.local_run import run_local; "
            f"cfg = load_config('configs/tiny.yaml', ['run.work_dir={tmp_path}', 'run.experiment=exit-task', "
            f"'source.kind=movielens', 'source.path={tmp_path / 'missing'}']); "
            "r = run_local(cfg, 'no-genrec-run'); print('FAILED TASK', r.failed_task); sys.exit(0 if not r.succeeded else 1)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=client_env(stack), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "FAILED TASK ingest" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    with logged_in(client_env(stack)):
        client = mlflow.MlflowClient(tracking_uri=stack.uri)
        runs = client.search_runs([client.get_experiment_by_name("exit-task").experiment_id])
    assert {r.data.tags["genrec.stage"]: r.info.status for r in runs} == {"pipeline": "FAILED", "ingest": "FAILED"}


# ---- failure modes: one line, in seconds, no traceback --------------------------------------------------------------

def _fails_fast(proc: subprocess.CompletedProcess, seconds: float, *expected: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout[-2000:] + err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    assert seconds < 30, f"took {seconds:.0f} s"
    return lines[0]


def _ingest(stack, tmp_path, **env_changes):
    t0 = time.time()
    proc = genrec(client_env(stack, **env_changes), "ingest", "--config", "configs/tiny.yaml",
                  f"run.work_dir={tmp_path}", f"run.experiment={EXPERIMENT}", "--out", str(tmp_path / "out"))
    return proc, time.time() - t0


def test_unreachable_server(stack, tmp_path):
    dead = f"http://127.0.0.1:{local_stack.free_port()}"
    proc, s = _ingest(stack, tmp_path, MLFLOW_TRACKING_URI=dead)
    _fails_fast(proc, s, f"cannot reach the MLflow server at {dead}", "mlflow/README.md")


def test_wrong_password(stack, tmp_path):
    proc, s = _ingest(stack, tmp_path, MLFLOW_TRACKING_PASSWORD="not-the-password")
    line = _fails_fast(proc, s, "refused the login of user 'pipeline'", "MLFLOW_TRACKING_PASSWORD")
    assert "not-the-password" not in line
    proc, s = _ingest(stack, tmp_path, MLFLOW_TRACKING_USERNAME=None, MLFLOW_TRACKING_PASSWORD=None)
    _fails_fast(proc, s, "requires a login", "MLFLOW_TRACKING_USERNAME")


def test_user_without_permission_on_the_experiment(stack, tiny_run, tmp_path):
    password = secrets.token_urlsafe(16)
    with stack.server_env():
        local_stack.create_user(stack.stack, "outsider", password)  # default permission READ: may look, not write
    proc, s = _ingest(stack, tmp_path, MLFLOW_TRACKING_USERNAME="outsider", MLFLOW_TRACKING_PASSWORD=password)
    _fails_fast(proc, s, "user 'outsider' has no permission to write to experiment", "EDIT")
    assert not (tmp_path / "out" / "events.parquet").exists()


def test_object_store_unreachable(stack, tiny_run, tmp_path):
    """A second server over the same databases whose object store does not answer."""
    st = stack.stack
    broken = local_stack.Stack(str(tmp_path), f"http://127.0.0.1:{local_stack.free_port()}", st.pg_port,
                               f"http://127.0.0.1:{local_stack.free_port()}", st.pg_dir)
    with stack.server_env():
        pid = local_stack.start_server(tmp_path, broken, workers=1)
    try:
        proc, s = _ingest(stack, tmp_path, MLFLOW_TRACKING_URI=broken.uri)
        _fails_fast(proc, s, f"the MLflow server at {broken.uri} cannot reach its artifact store")
    finally:
        local_stack._kill_group(pid)


def test_whole_run_refuses_a_wrong_login_before_any_task(stack, tmp_path):
    t0 = time.time()
    proc = genrec(client_env(stack, MLFLOW_TRACKING_PASSWORD="wrong-wrong"), "run", "--config", "configs/tiny.yaml",
                  f"run.work_dir={tmp_path}")
    _fails_fast(proc, time.time() - t0, "refused the login")
    assert "started" not in proc.stdout and not (tmp_path / "kfp").exists()
