"""The sessionization job as a SparkApplication of the Kubeflow Spark operator (cluster.spark.mode=operator).

The sessionize task creates the SparkApplication (spark_jobs/sessionize.py in the Spark image), which reads the
validated events where validate-events wrote them and writes the pages to this stage's data folder, both under
run.data_root (s3://, read as s3a://). The task waits for it and reads the job's report from there; it downloads no
table. A failed application fails the task with the operator's error message and the end of the driver's log.
"""

from __future__ import annotations

import json
import os
import time

from genrec import k8s_jobs
from genrec.cluster_config import default_spark_image
from genrec.config import PipelineConfig
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
        "spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions),
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


def read_remote_report(out_uri: str) -> dict:
    """The report the job wrote as <out_uri>/_report/part-* (one JSON line), local or in the object store."""
    from pyarrow import fs

    from genrec.data import tables
    from genrec.data.io import location
    from genrec.spark.sessionize import REMOTE_REPORT

    filesystem, root = location(tables.join(out_uri, REMOTE_REPORT))
    try:
        parts = sorted(f.path for f in filesystem.get_file_info(fs.FileSelector(root))
                       if f.type == fs.FileType.File and f.base_name.startswith("part-"))
    except FileNotFoundError:
        parts = []
    lines = []
    for part in parts:
        with filesystem.open_input_stream(part) as f:
            lines += [line for line in f.read().decode().splitlines() if line.strip()]
    if len(lines) != 1:
        raise InputDataError(f"{tables.join(out_uri, REMOTE_REPORT)}: expected the job's one-line report, found "
                             f"{len(lines)} lines")
    return json.loads(lines[0])


def run_on_operator(cfg: PipelineConfig, events_uri: str, data_uri: str, pipeline_run_id: str, api_client=None,
                    namespace: str = "") -> dict:
    """Run the SparkApplication on the events at events_uri, writing under data_uri (both s3://); returns the job's
    report."""
    from genrec.data import tables

    for what, uri in (("the validated events", events_uri), ("this stage's data folder", data_uri)):
        if not uri.startswith("s3://"):
            raise InputDataError(f"cluster.spark.mode=operator: {what} ({uri}) are not in the object store, where "
                                 f"the job's pods could read them: set run.data_root=s3://bucket/prefix")
    name = f"genrec-sessionize-{pipeline_run_id[:12]}-{int(time.time()) % 100000}".lower()
    manifest = application_manifest(cfg, name, tables.spark_uri(events_uri), tables.spark_uri(data_uri),
                                    os.environ.get("AWS_ENDPOINT_URL", ""))
    client = api_client or k8s_jobs.api_client()
    namespace = namespace or k8s_jobs.current_namespace()

    def driver_log(obj: dict) -> str:
        pod = ((obj.get("status") or {}).get("driverInfo") or {}).get("podName", "")
        return f"driver {pod}:\n{k8s_jobs.pod_log_tail(client, namespace, pod)}"

    s = cfg.cluster.spark
    k8s_jobs.run_job(client, k8s_jobs.SPARK_APPLICATION, namespace, manifest, s.timeout_s, s.poll_s,
                     echo=lambda line: print(line, flush=True), failure_detail=driver_log)
    return read_remote_report(data_uri)
