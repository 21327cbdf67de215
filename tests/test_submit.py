"""`genrec submit` against a stand-in for the KFP API server on 127.0.0.1 (the v2beta1 REST endpoints kfp.Client
calls), so that what the real client sends is what is checked: the compiled pipeline with its cluster settings, the
config and the pipeline run id as parameters, the experiment, the service account and the bearer token."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
TOKEN = "tok-" + os.urandom(8).hex()


class FakeKfp(BaseHTTPRequestHandler):
    """Answers like KFP 2.x's API server; records every request."""

    requests: list = []
    run_states = ["RUNNING", "SUCCEEDED"]
    refuse = False  # answer creating a run with 401, as an expired token gets

    def _reply(self, body: dict, status: int = 200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body=None):
        url = urlparse(self.path)
        self.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                              "auth": self.headers.get("Authorization"), "body": body})
        return url.path

    def do_GET(self):
        path = self._record()
        if path == "/apis/v2beta1/healthz":
            self._reply({"multi_user": False})
        elif path == "/apis/v2beta1/experiments":
            self._reply({})  # none yet: the client creates it
        elif path == "/apis/v2beta1/runs/run-1":
            state = self.run_states.pop(0) if len(self.run_states) > 1 else self.run_states[0]
            self._reply({"run_id": "run-1", "state": state})
        else:
            self._reply({"error": path}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        path = self._record(body)
        if path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        elif path == "/apis/v2beta1/runs" and self.refuse:
            self._reply({"error": "Unauthorized"}, 401)
        elif path == "/apis/v2beta1/runs":
            self._reply({"run_id": "run-1", "display_name": body["display_name"], "state": "PENDING"})
        else:
            self._reply({"error": path}, 404)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_server():
    FakeKfp.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _submit(*args, **env):
    """`genrec submit` with the arguments; a run needs a shared run.data_root (configs/cluster-gpu.yaml sets one)."""
    args = (*args, "run.data_root=s3://genrec-data/runs") if "--config" not in args else args
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "submit", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HOME": env.pop("HOME", os.environ["HOME"]), **env})


def test_submit_creates_the_run_with_config_cluster_settings_and_token(kfp_server, tmp_path):
    proc = _submit("--host", kfp_server, "--config", "configs/cluster-gpu.yaml", "--service-account", "genrec-pipeline",
                   "--image", "reg/genrec:1", "--wait", "--out", str(tmp_path / "p.yaml"), "sft.epochs=3",
                   KFP_TOKEN=TOKEN, HOME=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "run run-1 created in experiment genrec-cluster" in proc.stdout
    assert f"{kfp_server}/#/runs/details/run-1" in proc.stdout and "SUCCEEDED" in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr
    reqs = FakeKfp.requests
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in reqs)
    (exp,) = [r for r in reqs if r["method"] == "POST" and r["path"] == "/apis/v2beta1/experiments"]
    assert exp["body"]["display_name"] == "genrec-cluster"
    (run,) = [r["body"] for r in reqs if r["method"] == "POST" and r["path"] == "/apis/v2beta1/runs"]
    assert run["experiment_id"] == "exp-1" and run["service_account"] == "genrec-pipeline"
    params = run["runtime_config"]["parameters"]
    config = json.loads(params["config_json"])
    assert config["sft"]["epochs"] == 3 and config["cluster"]["gpu"]["count"] == 1
    assert config["cluster"]["image"] == "reg/genrec:1"  # the tasks see the flag too
    assert config["run"]["work_dir"] == "/scratch/work"  # as the config says: a path of the pods, not of this machine
    assert len(params["pipeline_run_id"]) == 32 and params["pipeline_run_id"] in proc.stdout
    # The pipeline went whole, its Kubernetes settings included.
    spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-ingest"]["container"]["image"] == "reg/genrec:1"
    assert executors["exec-train-sft"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert "genrec-checkpoints" in json.dumps(platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
                                              ["exec-train-sft"])
    assert (tmp_path / "p.yaml").is_file()


def test_dry_run_prints_the_request_and_sends_nothing(kfp_server, tmp_path):
    proc = _submit("--host", kfp_server, "--config", "configs/cluster-gpu.yaml", "--dry-run", "--namespace", "team-a",
                   KFP_TOKEN=TOKEN, HOME=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert FakeKfp.requests == []
    request = json.loads(proc.stdout)
    assert request["host"] == kfp_server and request["namespace"] == "team-a"
    assert request["experiment"] == "genrec-cluster" and request["auth"].startswith("bearer token")
    assert TOKEN not in proc.stdout + proc.stderr
    assert request["arguments"]["config_json"]["run"]["name"] == "cluster-gpu"
    relative = _submit("--host", kfp_server, "--dry-run", HOME=str(tmp_path))
    assert json.loads(relative.stdout)["arguments"]["config_json"]["run"]["work_dir"] == "work"
    assert len(request["arguments"]["pipeline_run_id"]) == 32
    tasks = request["pipeline"]["tasks"]
    assert len(tasks) == 12 and tasks["train-sft"]["gpu"] == "1 x nvidia.com/gpu"
    assert tasks["train-sft"]["volumes"] == ["genrec-checkpoints at /checkpoints"]
    assert tasks["ingest"]["secrets"] == ["genrec-mlflow", "genrec-object-store"]
    assert Path(request["pipeline"]["file"]).is_file()


def test_a_run_without_a_shared_data_root_is_refused_before_it_starts(kfp_server, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "submit", "--host", kfp_server, "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 2 and "run.data_root is not set" in proc.stderr and "Traceback" not in proc.stderr
    assert FakeKfp.requests == []


def test_a_failed_run_exits_2_and_a_missing_pipeline_file_is_named(kfp_server, tmp_path):
    FakeKfp.run_states = ["FAILED"]
    try:
        proc = _submit("--host", kfp_server, "--wait", HOME=str(tmp_path))
    finally:
        FakeKfp.run_states = ["RUNNING", "SUCCEEDED"]
    assert proc.returncode == 2 and "run run-1: FAILED" in proc.stdout
    missing = _submit("--host", kfp_server, "--pipeline", str(tmp_path / "nope.yaml"), HOME=str(tmp_path))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr and "Traceback" not in missing.stderr


def test_unreachable_and_refusing_servers_give_one_line(kfp_server, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = _submit("--host", f"http://127.0.0.1:{port}", HOME=str(tmp_path))
    assert down.returncode == 2 and f"cannot reach KFP at http://127.0.0.1:{port}" in down.stderr, down.stderr
    assert "Traceback" not in down.stderr
    FakeKfp.refuse = True
    try:
        refused = _submit("--host", kfp_server, HOME=str(tmp_path), KFP_TOKEN=TOKEN)
    finally:
        FakeKfp.refuse = False
    assert refused.returncode == 2 and "answered 401" in refused.stderr and "KFP_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr and TOKEN not in refused.stderr
