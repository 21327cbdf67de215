"""The data stages on a real Spark standalone cluster on loopback (one master, two workers, started from pyspark's own
classes), through spark.master: the same job code, and the same output as local mode, page for page."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from genrec.data import tables
from genrec.data.io import read_pages, read_parquet

pytestmark = pytest.mark.spark
SIM = ["simulator.n_users=120", "simulator.n_items=200", "simulator.days=6"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_class(*args: str, log: Path) -> subprocess.Popen:
    import pyspark

    home = Path(pyspark.__file__).parent
    env = dict(os.environ, SPARK_HOME=str(home), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    return subprocess.Popen([str(home / "bin" / "spark-class"), *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if re.search(pattern, log.read_text()):
            return
        assert proc.poll() is None, f"{log.name} exited:\n{log.read_text()[-2000:]}"
        time.sleep(0.3)
    raise AssertionError(f"{log.name}: no '{pattern}' in {timeout_s} s:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """spark://127.0.0.1:<port> with two workers of one core and 1 GiB each; stopped after the module."""
    root = tmp_path_factory.mktemp("standalone")
    port = _free_port()
    master_log = root / "master.log"
    procs = [_spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                          "--webui-port", str(_free_port()), log=master_log)]
    try:
        _wait_for(master_log, r"I have been elected leader", procs[0])
        url = f"spark://127.0.0.1:{port}"
        for i in range(2):
            procs.append(_spark_class("org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores",
                                      "1", "--memory", "1g", "--webui-port", str(_free_port()), "--work-dir",
                                      str(root / f"worker{i}"), log=root / f"worker{i}.log"))
        for i in range(2):
            _wait_for(root / f"worker{i}.log", r"Successfully registered with master", procs[i + 1])
        yield url, master_log
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _stage(*args: str, work: Path) -> None:
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-m", "genrec.cli", *args, f"run.work_dir={work}", "run.experiment=tests",
                           *SIM], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _data_stages(raw: Path, work: Path, master: str, run_id: str) -> Path:
    """validate-events, sessionize and validate-pages on `master`, each its own process (as its own task is)."""
    common = ["--pipeline-run-id", run_id, f"spark.master={master}", "spark.driver_memory=1g",
              "spark.executor_memory=1g"]
    _stage("validate-events", "--input", str(raw), "--out", str(work / "validated"), *common, work=work)
    _stage("sessionize", "--input", str(work / "validated"), "--out", str(work / "sessionized"), *common, work=work)
    _stage("validate-pages", "--input", str(work / "sessionized"), "--out", str(work / "pages"), *common, work=work)
    return work


def _data_stages_in_process(raw: Path, work: Path, spark, run_id: str) -> Path:
    """The same three stages in local mode, called in this process on the suite's Spark session: the reference the
    cluster's output is compared with (the stage processes themselves are the cluster half's business)."""
    from genrec.config import load_config
    from genrec.stages.sessionize import run_sessionize
    from genrec.stages.validate_events import run_validate_events
    from genrec.stages.validate_pages import run_validate_pages

    cfg = load_config(None, [f"run.work_dir={work}", "run.experiment=tests", *SIM])
    run_validate_events(cfg, raw, work / "validated", run_id, spark=spark)
    run_sessionize(cfg, work / "validated", work / "sessionized", run_id, spark=spark)
    run_validate_pages(cfg, work / "sessionized", work / "pages", run_id, spark=spark)
    return work


def _sorted(table: pa.Table, *keys: str) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys]).select(sorted(table.column_names))


def test_data_stages_on_a_standalone_cluster_equal_local_mode(cluster, tmp_path, mlflow_server, spark):
    url, master_log = cluster
    raw = tmp_path / "raw"
    from genrec.config import load_config
    from genrec.stages.ingest import run_ingest

    run_ingest(load_config(None, [f"run.work_dir={tmp_path}", "run.experiment=tests", *SIM]), raw, "shared")
    on_cluster = _data_stages(raw, tmp_path / "cluster", url, "on-cluster")
    local = _data_stages_in_process(raw, tmp_path / "local", spark, "local")

    report = json.loads((on_cluster / "sessionized" / "report.json").read_text())
    assert report["spark_master"] == url
    # the master gave each of the three stages' applications executors on the workers
    assert len(re.findall(r"Registered app genrec-", master_log.read_text())) >= 3
    assert len(re.findall(r"Launching executor", master_log.read_text())) >= 6
    for folder, name, keys in (("validated", "events.parquet", ["event_id"]), ("validated", "items.parquet", ["item_id"]),
                               ("sessionized", "sessions", ["session_id"]), ("pages", "pairs", ["item_a", "item_b"])):
        a, b = (read_parquet(tables.locate(d / folder, name, ""), "") for d in (on_cluster, local))
        assert a.num_rows == b.num_rows > 0 and _sorted(a, *keys).equals(_sorted(b, *keys)), (folder, name)
    a, b = (read_pages(tables.locate(d / "pages", "pages", "")) for d in (on_cluster, local))
    assert a.num_rows == b.num_rows > 0 and _sorted(a, "page_id").equals(_sorted(b, "page_id"))
    assert {r["tables"][0]["rows_out"] for r in (json.loads((d / "pages" / "report.json").read_text())
                                                  for d in (on_cluster, local))} == {a.num_rows}
