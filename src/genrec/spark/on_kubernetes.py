"""The sessionization job as a SparkApplication of the Kubeflow Spark operator (cluster.spark.mode=operator).

The sessionize task stages its input in the object store (cluster.spark.data_root), creates the SparkApplication
(spark_jobs/sessionize.py in the Spark image, reading and writing s3a://), waits for it, and brings the output back
into its own output folder for the stages after it. A failed application fails the task with the operator's error
message and the end of the driver's log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from genrec import k8s_jobs
from genrec.cluster_config import default_spark_image
from genrec.config import PipelineConfig
from genrec.data.io import copy_tree
from genrec.errors import InputDataError

# Where docker/Dockerfile.spark puts the job's entry file.
MAIN_FILE = "local:///opt/genrec/spark_jobs/sessionize.py"


def spark_version() -> str:
    import pyspark

    return pyspark.__version__


def application_manifest(cfg: PipelineConfig, name: str, events_uri: str, out_uri: str,
                         s3_endpoint: str = "") -> dict:
    """The SparkApplication (sparkoperator.k8s.io/v1beta2) that sessionizes events_uri into out_uri."""
    s, c = cfg.cluster.spark, cfg.cluster
    env = []
    if c.object_store_secret:  # s3a reads the standard AWS variables
        env = [{"name": k, "valueFrom": {"secretKeyRef": {"name": c.object_store_secret, "key": k}}}
               for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    conf = {
        "spark.sql.shuffle.partitions": str(cfg.sessionize.shuffle_partitions),
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.aws.credentials.provider":
            "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
    }
    if s3_endpoint:  # MinIO / Ceph: its own endpoint and path-style buckets
        conf.update({"spark.hadoop.fs.s3a.endpoint": s3_endpoint, "spark.hadoop.fs.s3a.path.style.access": "true"})
    pod = {"env": env, "labels": {"app.kubernetes.io/part-of": "genrec", "genrec/stage": "sessionize"},
           "podSecurityContext": {"runAsUser": c.run_as_user, "runAsGroup": 0, "runAsNonRoot": True}}
    return {
        "apiVersion": "sparkoperator.k8s.io/v1beta2", "kind": "SparkApplication",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "genrec", "genrec/stage": "sessionize"}},
        "spec": {
            "type": "Python", "pythonVersion": "3", "mode": "cluster",
            "image": s.image or default_spark_image(), "sparkVersion": s.spark_version or spark_version(),
            "mainApplicationFile": MAIN_FILE,
            "arguments": ["--events", events_uri, "--out", out_uri, "--config-json", cfg.to_json()],
            "sparkConf": conf,
            "restartPolicy": {"type": "Never"},
            "timeToLiveSeconds": 24 * 3600,
            **({"imagePullSecrets": list(c.image_pull_secrets)} if c.image_pull_secrets else {}),
            "driver": {"cores": s.driver_cores, "memory": s.driver_memory, "serviceAccount": s.service_account, **pod},
            "executor": {"instances": s.executor_instances, "cores": s.executor_cores, "memory": s.executor_memory,
                         **pod},
        },
    }


def read_remote_report(out_dir: Path) -> dict:
    """The report the job wrote as _report/part-*.txt (a URI output), as report.json beside it."""
    from genrec.spark.sessionize import REMOTE_REPORT

    parts = sorted((Path(out_dir) / REMOTE_REPORT).glob("part-*"))
    lines = [line for p in parts for line in p.read_text().splitlines() if line.strip()]
    if len(lines) != 1:
        raise InputDataError(f"{out_dir / REMOTE_REPORT}: expected the job's one-line report, found {len(lines)} lines")
    report = json.loads(lines[0])
    (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2))
    return report


def run_on_operator(cfg: PipelineConfig, events: Path, out_dir: Path, pipeline_run_id: str, api_client=None,
                    namespace: str = "") -> dict:
    """Stage the events, run the SparkApplication, fetch its output into out_dir; returns the job's report."""
    s = cfg.cluster.spark
    base = f"{s.data_root.rstrip('/')}/{pipeline_run_id}/sessionize"
    n = copy_tree(events, f"{base}/input/events.parquet")
    print(f"sessionize: {n} input files -> {base}/input", flush=True)
    name = f"genrec-sessionize-{pipeline_run_id[:12]}-{int(time.time()) % 100000}".lower()
    manifest = application_manifest(cfg, name, f"{base}/input/events.parquet", f"{base}/output",
                                    os.environ.get("AWS_ENDPOINT_URL", ""))
    client = api_client or k8s_jobs.api_client()
    namespace = namespace or k8s_jobs.current_namespace()

    def driver_log(obj: dict) -> str:
        pod = ((obj.get("status") or {}).get("driverInfo") or {}).get("podName", "")
        return f"driver {pod}:\n{k8s_jobs.pod_log_tail(client, namespace, pod)}"

    k8s_jobs.run_job(client, k8s_jobs.SPARK_APPLICATION, namespace, manifest, s.timeout_s, s.poll_s,
                     echo=lambda line: print(line, flush=True), failure_detail=driver_log)
    n = copy_tree(f"{base}/output", out_dir)
    print(f"sessionize: {n} output files <- {base}/output", flush=True)
    return read_remote_report(out_dir)
