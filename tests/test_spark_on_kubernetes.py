"""sessionize with cluster.spark.mode=operator: the SparkApplication against the Spark operator's generated API
models, the job writing to URIs, and the whole task against moto's S3 server and a stand-in API server that plays
the operator (it runs the application's job with this machine's Spark, on the bucket's files)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from genrec.errors import InputDataError
from k8s_standin import StandIn, strict_errors
from test_sessionize import _events

pytestmark = pytest.mark.spark
REPO = Path(__file__).resolve().parents[1]
BUCKET = "genrec-data"  # the s3 fixture (conftest.py) creates it


def _cfg(make_cfg, *extra):
    return make_cfg("cluster.spark.mode=operator", f"run.data_root=s3://{BUCKET}/runs",
                    "cluster.spark.poll_s=0.5", "cluster.spark.timeout_s=300",
                    "cluster.object_store_secret=genrec-object-store",
                    "spark.shuffle_partitions=4", "sessionize.output_partitions=1",
                    "sessionize.fallback_page_size=5", *extra)


def test_application_matches_the_spark_operator_api(make_cfg):
    from kubeflow_spark_api.models import SparkV1beta2SparkApplication

    from genrec.spark.on_kubernetes import MAIN_FILE, application_manifest

    cfg = _cfg(make_cfg, "cluster.spark.executor_instances=8", "cluster.spark.executor_memory=12g")
    m = application_manifest(cfg, "genrec-sessionize-x", "s3a://b/in/events.parquet", "s3a://b/out",
                             "http://minio:9000")
    assert strict_errors(SparkV1beta2SparkApplication, m) == []
    spec = m["spec"]
    assert (spec["type"], spec["mode"], spec["mainApplicationFile"]) == ("Python", "cluster", MAIN_FILE)
    assert spec["arguments"][:4] == ["--events", "s3a://b/in/events.parquet", "--out", "s3a://b/out"]
    assert json.loads(spec["arguments"][5])["spark"]["shuffle_partitions"] == 4
    assert (spec["executor"]["instances"], spec["executor"]["memory"]) == (8, "12g")
    assert spec["driver"]["serviceAccount"] == "genrec-spark"
    assert spec["sparkConf"]["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
    keys = {e["valueFrom"]["secretKeyRef"]["name"] for e in spec["executor"]["env"]}
    assert keys == {"genrec-object-store"} and "AWS_SECRET_ACCESS_KEY" not in json.dumps(spec["sparkConf"])
    m["spec"]["executor"]["instance"] = 3
    assert any("instance" in e for e in strict_errors(SparkV1beta2SparkApplication, m))


def test_job_writes_to_a_uri_and_leaves_its_report_there(spark, tmp_path):
    from genrec.config import SessionizeConfig
    from genrec.spark.on_kubernetes import read_remote_report
    from genrec.spark.sessionize import sessionize, write_report

    pq.write_table(_events(), tmp_path / "events.parquet")
    cfg = SessionizeConfig(output_partitions=1, fallback_page_size=5)
    report = sessionize(spark, f"file://{tmp_path}/events.parquet", f"file://{tmp_path}/out", cfg)
    write_report(spark, report, f"file://{tmp_path}/out")
    assert read_remote_report(f"file://{tmp_path}/out") == json.loads(json.dumps(report))
    assert report["n_pages"] > 0 and (tmp_path / "out" / "pages" / "split=test").is_dir()


class FakeOperator:
    """Runs a SparkApplication's job here as spark_jobs/sessionize.py does: the s3a:// input fetched from the bucket,
    the output (with its _report) put back."""

    def __init__(self, spark, fail: str = ""):
        self.spark, self.state, self.fail = spark, {}, fail

    def create(self, obj):
        name = obj["metadata"]["name"]
        self.state[name] = "RUNNING"
        try:
            self._run(obj)
        except Exception as exc:  # as the operator reports a driver that failed, so the task ends rather than waits
            self.state[name] = ("FAILED", f"driver container failed with ExitCode: 1, Reason: Error ({exc!r})")
            return
        self.state[name] = "COMPLETED"

    def _run(self, obj):
        from genrec.config import config_from_json
        from genrec.data.io import copy_tree
        from genrec.spark.sessionize import sessionize, write_report

        if self.fail:
            raise RuntimeError(self.fail)
        args = obj["spec"]["arguments"]
        events, out, config = args[1], args[3], config_from_json(args[5])
        with tempfile.TemporaryDirectory() as tmp:
            copy_tree(events, Path(tmp) / "in" / "events.parquet")
            report = sessionize(self.spark, str(Path(tmp) / "in" / "events.parquet"), f"file://{tmp}/out",
                                config.sessionize)
            write_report(self.spark, report, f"file://{tmp}/out")
            copy_tree(Path(tmp) / "out", out)

    def status(self, obj):
        state = self.state.get(obj["metadata"]["name"], "SUBMITTED")
        state, message = state if isinstance(state, tuple) else (state, "")
        return {"applicationState": {"state": state, "errorMessage": message},
                "driverInfo": {"podName": obj["metadata"]["name"] + "-driver"}}


def _validated_in_the_bucket(s3, tmp_path, run_id: str) -> Path:
    """validate-events' output folder as a task gets it: the reference to events under run.data_root."""
    from genrec.data import tables

    key = f"runs/{run_id}/validate-events/events.parquet/part-00000.parquet"
    s3.upload_file(str(_write_events(tmp_path)), BUCKET, key)
    validated = tmp_path / "validated"
    tables.record(validated, "events.parquet", f"s3://{BUCKET}/runs/{run_id}/validate-events/events.parquet",
                  written_by="validate-events")
    return validated


def test_sessionize_task_runs_its_job_on_the_operator(spark, s3, make_cfg, tmp_path, monkeypatch):
    from genrec import k8s_jobs
    from genrec.data import tables
    from genrec.stages.sessionize import run_sessionize

    validated = _validated_in_the_bucket(s3, tmp_path, "kfp-run-5")
    operator = FakeOperator(spark)
    api = StandIn(on_create=operator.create, status_of=operator.status)
    monkeypatch.setattr(k8s_jobs, "api_client", api.client)
    monkeypatch.setattr(k8s_jobs, "current_namespace", lambda: "team-a")
    try:
        report = run_sessionize(_cfg(make_cfg), validated, tmp_path / "out", "kfp-run-5")
    finally:
        api.stop()
    (name,) = api.objects
    assert ("POST", "/apis/sparkoperator.k8s.io/v1beta2/namespaces/team-a/sparkapplications") in api.calls
    spec = api.objects[name]["spec"]
    # the job reads the events where validate-events wrote them and writes under this stage's data folder
    assert spec["arguments"][:4] == ["--events", f"s3a://{BUCKET}/runs/kfp-run-5/validate-events/events.parquet",
                                     "--out", f"s3a://{BUCKET}/runs/kfp-run-5/sessionize"]
    assert report["n_pages"] > 0 and json.loads((tmp_path / "out" / "report.json").read_text()) == report
    pages = tables.read_ref(tmp_path / "out", "pages")
    assert pages.uri == f"s3://{BUCKET}/runs/kfp-run-5/sessionize/pages" and pages.n_rows == report["n_pages"]
    assert not list((tmp_path / "out").rglob("*.parquet"))  # the task downloaded no table
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.startswith("runs/kfp-run-5/sessionize/pages/split=test/") for k in keys)


def test_a_failed_application_fails_the_task_with_the_drivers_error(spark, s3, make_cfg, tmp_path, monkeypatch):
    from genrec import k8s_jobs
    from genrec.k8s_jobs import JobFailed
    from genrec.stages.sessionize import run_sessionize

    validated = _validated_in_the_bucket(s3, tmp_path, "kfp-run-6")
    operator = FakeOperator(spark, fail="AnalysisException: not a Parquet file")
    logs = {}
    api = StandIn(on_create=lambda obj: (operator.create(obj), logs.update(
        {obj["metadata"]["name"] + "-driver": ({}, "Failed", "Traceback ...\nAnalysisException: not a Parquet file")})),
                  status_of=operator.status, pod_logs=logs)
    monkeypatch.setattr(k8s_jobs, "api_client", api.client)
    monkeypatch.setattr(k8s_jobs, "current_namespace", lambda: "team-a")
    try:
        with pytest.raises(JobFailed, match=r"(?s)SparkApplication team-a/.* failed: FAILED: driver container failed"
                                            r".*driver .*-driver:\n  \| Traceback.*not a Parquet file"):
            run_sessionize(_cfg(make_cfg), validated, tmp_path / "out", "kfp-run-6")
    finally:
        api.stop()
    assert not (tmp_path / "out").exists()  # the half-made output is never used ...
    assert (tmp_path / "out.partial" / "_GENREC_INCOMPLETE.json").exists()  # ... and its work folder says so


def test_operator_mode_refuses_events_outside_the_object_store(spark, s3, make_cfg, tmp_path):
    from genrec.spark.on_kubernetes import run_on_operator

    with pytest.raises(InputDataError, match="are not in the object store.*set run.data_root=s3://"):
        run_on_operator(_cfg(make_cfg), str(tmp_path / "events.parquet"), f"s3://{BUCKET}/runs/x/sessionize", "x")


def test_spark_image_entry_point_runs_the_driver(tmp_path, make_cfg):
    """docker/spark-entrypoint.sh in driver mode, as Spark's Kubernetes backend starts the driver pod (here with a
    local master, since no cluster runs here): the job runs and writes its report at the URI."""
    from genrec.spark.on_kubernetes import read_remote_report

    pq.write_table(_events(), tmp_path / "events.parquet")
    cfg = _cfg(make_cfg)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               SPARK_DRIVER_BIND_ADDRESS="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    env.pop("SPARK_HOME", None)
    proc = subprocess.run(["bash", str(REPO / "docker" / "spark-entrypoint.sh"), "driver", "--master", "local[2]",
                           "--conf", "spark.ui.enabled=false", str(REPO / "spark_jobs" / "sessionize.py"),
                           "--events", f"file://{tmp_path}/events.parquet", "--out", f"file://{tmp_path}/out",
                           "--config-json", cfg.to_json()], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_remote_report(str(tmp_path / "out"))["n_pages"] > 0
    # An executor pod without the backend's settings stops with a message, not a Java stack trace.
    bare = subprocess.run(["bash", str(REPO / "docker" / "spark-entrypoint.sh"), "executor"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert bare.returncode != 0 and "SPARK_DRIVER_URL" in bare.stderr


def test_spark_jars_are_fetched_for_pysparks_hadoop_and_checked(tmp_path):
    """docker/spark_jars.py against a stand-in Maven repository on 127.0.0.1 (Maven Central is out of reach here)."""
    import hashlib
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    hadoop = next(jars.glob("hadoop-client-api-*.jar")).name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    repo = tmp_path / "maven"

    def publish(group, name, version, ext, data: bytes, sha1: str = ""):
        folder = repo / group.replace(".", "/") / name / version
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}-{version}.{ext}").write_bytes(data)
        (folder / f"{name}-{version}.{ext}.sha1").write_text(sha1 or hashlib.sha1(data).hexdigest())

    publish("org.apache.hadoop", "hadoop-project", hadoop, "pom",
            b'<project xmlns="http://maven.apache.org/POM/4.0.0"><properties>'
            b'<aws-java-sdk-v2.version>2.99.1</aws-java-sdk-v2.version></properties></project>')
    publish("org.apache.hadoop", "hadoop-aws", hadoop, "jar", b"aws jar")
    publish("software.amazon.awssdk", "bundle", "2.99.1", "jar", b"sdk jar")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(repo)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    into = tmp_path / "jars"
    into.mkdir()
    (into / f"hadoop-client-api-{hadoop}.jar").write_bytes(b"")
    cmd = [sys.executable, str(REPO / "docker" / "spark_jars.py"), "--into", str(into), "--maven",
           f"http://127.0.0.1:{server.server_port}"]
    try:
        ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert (into / f"hadoop-aws-{hadoop}.jar").read_bytes() == b"aws jar"
        assert (into / "bundle-2.99.1.jar").read_bytes() == b"sdk jar"
        publish("software.amazon.awssdk", "bundle", "2.99.1", "jar", b"tampered", sha1="0" * 40)
        bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "SHA-1 does not match" in bad.stderr
    finally:
        server.shutdown()


def test_job_reads_and_writes_s3a(s3, tmp_path, make_cfg):
    """The job itself on s3a:// against moto's S3, as the SparkApplication runs it. Needs hadoop-aws and the AWS SDK
    bundle among pyspark's jars (docker/spark_jars.py puts them there; the Spark image has them)."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    if not list(jars.glob("hadoop-aws-*.jar")):
        pytest.skip(f"no hadoop-aws jar in {jars}: s3a is not available here (Maven Central is out of reach from the "
                    f"project's machines; `python docker/spark_jars.py --into {jars}` where it is not)")
    from genrec.spark.on_kubernetes import application_manifest, read_remote_report

    s3.upload_file(str(_write_events(tmp_path)), BUCKET, "in/events.parquet")
    cfg = _cfg(make_cfg)
    conf = application_manifest(cfg, "x", "", "", os.environ["AWS_ENDPOINT_URL"])["spec"]["sparkConf"]
    confs = [a for k, v in conf.items() for a in ("--conf", f"{k}={v}")]
    proc = subprocess.run([str(jars.parent / "bin" / "spark-submit"), "--master", "local[2]", *confs,
                           str(REPO / "spark_jobs" / "sessionize.py"), "--events", f"s3a://{BUCKET}/in/events.parquet",
                           "--out", f"s3a://{BUCKET}/out", "--config-json", cfg.to_json()],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYSPARK_PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_remote_report(f"s3a://{BUCKET}/out")["n_pages"] > 0


def _write_events(tmp_path: Path) -> Path:
    path = tmp_path / "events.parquet"
    pq.write_table(_events(), path)
    return path
