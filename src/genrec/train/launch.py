"""How a training stage (train-sft, align) runs: in this process, as `torchrun` processes in this pod, or as a
Kubeflow Trainer TrainJob across pods (cluster.training.launcher).

Every way runs the same stage command (`genrec train-sft` / `genrec align`) with the same DeepSpeed config; only
the number of ranks changes. A TrainJob's pods cannot see this task's local folders, so its inputs, checkpoints and
outputs go through the shared volume (cluster.checkpoint_pvc at run.checkpoint_root), and the outputs are copied
back into this task's output folder when it has succeeded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from genrec import k8s_jobs, stage_outputs
from genrec.cluster_config import default_gpu_image, default_image
from genrec.config import PipelineConfig
from genrec.data.schema import PSEUDO_EXPOSURES_FILE
from genrec.data.tables import REF_SUFFIX

# The stage command of each training stage, and its input options in order.
# The inputs of the stages a launcher runs, in CLI order, and what a TrainJob's shared volume gets of each: the whole
# folder (None) or only the files named (of ingest's folder align reads one side table, when there is one). Tables
# stay where their stage wrote them (run.data_root, which the TrainJob's pods must reach): a folder holds their
# references (genrec.data.tables).
STAGES: dict[str, dict[str, tuple[str, ...] | None]] = {
    "train-sft": {"pages": None, "sids": None},
    "align": {"sft": None, "reward": None, "pages": None, "sids": None, "embeddings": None,
              "raw": (PSEUDO_EXPOSURES_FILE + REF_SUFFIX,)},
}
# The container of the torch-distributed runtime's pods (Kubeflow Trainer).
TRAINER_CONTAINER = "node"
# The label JobSet (under the Trainer) puts on the pods of a TrainJob.
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"


def stage_argv(stage: str, config_file: Path, inputs: dict[str, Path], out_dir: Path, pipeline_run_id: str) -> list:
    """The arguments of `genrec <stage>` for these inputs (after `-m genrec.cli`)."""
    if set(inputs) != set(STAGES[stage]):
        raise ValueError(f"{stage} takes inputs {list(STAGES[stage])}, got {sorted(inputs)}")
    argv = [stage, "--config", str(config_file)]
    for name in STAGES[stage]:
        argv += [f"--{name}", str(inputs[name])]
    return argv + ["--out", str(out_dir), "--pipeline-run-id", pipeline_run_id]


def run_training(cfg: PipelineConfig, stage: str, inputs: dict[str, str | Path], out_dir: str | Path,
                 pipeline_run_id: str) -> None:
    """Run `stage` with cfg.cluster.training's launcher; its outputs end up in out_dir either way."""
    t = cfg.cluster.training
    inputs, out_dir = {k: Path(v) for k, v in inputs.items()}, Path(out_dir)
    if t.launcher == "in_process":
        _in_process(cfg, stage, inputs, out_dir, pipeline_run_id)
    elif t.launcher == "torchrun":
        run_torchrun(cfg, stage, inputs, out_dir, pipeline_run_id)
    else:
        run_trainjob(cfg, stage, inputs, out_dir, pipeline_run_id)


def _in_process(cfg, stage, inputs, out_dir, pipeline_run_id) -> None:
    if stage == "train-sft":
        from genrec.stages.train_sft import run_train_sft

        run_train_sft(cfg, inputs["pages"], inputs["sids"], out_dir, pipeline_run_id)
    else:
        from genrec.stages.align import run_align

        run_align(cfg, inputs["sft"], inputs["reward"], inputs["pages"], inputs["sids"], inputs["embeddings"],
                  out_dir, pipeline_run_id, inputs["raw"])


def run_torchrun(cfg: PipelineConfig, stage: str, inputs: dict[str, Path], out_dir: Path, pipeline_run_id: str) -> None:
    """processes_per_node ranks of the stage command in this pod (torchrun --standalone), output to this terminal."""
    n = cfg.cluster.training.processes_per_node
    with tempfile.TemporaryDirectory(prefix=f"genrec-{stage}-") as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(cfg.to_yaml())
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "genrec.cli", *stage_argv(stage, config_file, inputs, out_dir, pipeline_run_id)]
        print(f"{stage}: {n} processes: {' '.join(cmd[1:])}", flush=True)
        rc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))).returncode
    if rc != 0:
        raise k8s_jobs.JobFailed(f"{stage}: torchrun with {n} processes exited with {rc} (the ranks' errors are in "
                                 f"the log above)")


def trainjob_manifest(cfg: PipelineConfig, stage: str, name: str, argv: list[str]) -> dict:
    """The TrainJob (trainer.kubeflow.org/v1alpha1) that runs `genrec <argv>` under torchrun on num_nodes pods of
    processes_per_node ranks, with the pipeline's image, GPUs, scheduling, Secrets and the shared volume."""
    c, t = cfg.cluster, cfg.cluster.training
    task = stage.replace("-", "_")
    gpu = c.gpu_job(task)
    r = c.training_resources(task)
    limits = {"cpu": r.cpu_limit, "memory": r.memory_limit, **({c.gpu.accelerator: str(c.gpu.count)} if gpu else {})}
    requests = {"cpu": r.cpu_request, "memory": r.memory_request, **({c.gpu.accelerator: str(c.gpu.count)} if gpu else {})}
    pod: dict = {
        "securityContext": {"runAsUser": c.run_as_user, "runAsGroup": 0, "runAsNonRoot": True},
        "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": c.checkpoint_pvc}}],
        "containers": [{"name": TRAINER_CONTAINER,
                        "volumeMounts": [{"name": "shared", "mountPath": cfg.run.checkpoint_root}]}],
    }
    if gpu:
        if c.gpu.node_selector:
            pod["nodeSelector"] = dict(c.gpu.node_selector)
        pod["tolerations"] = [{k: v for k, v in tol.model_dump().items() if v} for tol in c.gpu.tolerations]
    if c.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in c.image_pull_secrets]
    image = (c.gpu_image or default_gpu_image()) if gpu else (c.image or default_image())
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "genrec", "genrec/stage": stage}},
        "spec": {
            "runtimeRef": {"name": t.runtime},
            "trainer": {"image": image, "command": ["torchrun", "-m", "genrec.cli", *argv],
                        "numNodes": t.num_nodes, "numProcPerNode": t.processes_per_node,
                        "resourcesPerNode": {"requests": requests, "limits": limits}, "env": _env_from_cluster(cfg)},
            "runtimePatches": [{"manager": "genrec", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                {"name": TRAINER_CONTAINER, "template": {"spec": {"template": {"spec": pod}}}}]}}}}],
        },
    }


def _env_from_cluster(cfg: PipelineConfig) -> list[dict]:
    """The same tracking and object-store settings the pipeline's tasks get, by reference to the Secrets and
    ConfigMaps (no value in the manifest)."""
    c, env = cfg.cluster, []

    def add(source: str, name: str, keys, optional: bool = False):
        for key in keys:
            ref = {"name": name, "key": key, **({"optional": True} if optional else {})}
            env.append({"name": key, "valueFrom": {source: ref}})

    if c.mlflow_secret:
        add("secretKeyRef", c.mlflow_secret, ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
            + (() if c.tracking_config_map else ("MLFLOW_TRACKING_URI",)))
    if c.tracking_config_map:
        add("configMapKeyRef", c.tracking_config_map, ("MLFLOW_TRACKING_URI",))
    if c.object_store_secret:
        add("secretKeyRef", c.object_store_secret, ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    if c.object_store_config_map:
        add("configMapKeyRef", c.object_store_config_map, ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"), optional=True)
    return env


def stage_inputs(stage: str, inputs: dict[str, Path], dest: Path) -> None:
    """Copy a stage's input folders to dest/<name>: whole, or only the files STAGES names (those that exist)."""
    for name, path in inputs.items():
        files = STAGES[stage][name]
        if files is None:
            shutil.copytree(path, dest / name, dirs_exist_ok=True)
            continue
        (dest / name).mkdir(parents=True, exist_ok=True)
        for file in files:
            if (path / file).is_file():
                shutil.copy2(path / file, dest / name / file)


def run_trainjob(cfg: PipelineConfig, stage: str, inputs: dict[str, Path], out_dir: Path, pipeline_run_id: str,
                 api_client=None, namespace: str = "") -> None:
    """Stage the inputs on the shared volume, run the TrainJob, copy its outputs (not its checkpoints) to out_dir."""
    t = cfg.cluster.training
    out_dir = stage_outputs.begin(out_dir, stage, pipeline_run_id, inputs)
    shared = Path(cfg.run.checkpoint_root) / pipeline_run_id / f"{stage}-job"
    stage_inputs(stage, inputs, shared / "inputs")  # a retried task copies again: the last attempt may have stopped halfway
    (shared / "config.yaml").write_text(cfg.to_yaml())
    job_out = shared / "out"
    argv = stage_argv(stage, shared / "config.yaml", {n: shared / "inputs" / n for n in inputs}, job_out,
                      pipeline_run_id)
    name = f"genrec-{stage}-{pipeline_run_id[:12]}-{int(time.time()) % 100000}".lower()
    manifest = trainjob_manifest(cfg, stage, name, argv)
    client = api_client or k8s_jobs.api_client()
    namespace = namespace or k8s_jobs.current_namespace()
    k8s_jobs.run_job(client, k8s_jobs.TRAIN_JOB, namespace, manifest, t.timeout_s, t.poll_s,
                     echo=lambda line: print(line, flush=True),
                     failure_detail=lambda obj: k8s_jobs.failed_pods_log_tail(client, namespace,
                                                                              f"{JOBSET_LABEL}={name}"))
    stage_outputs.require_complete(job_out, f"{stage} output of TrainJob {name}")
    shutil.copytree(job_out, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))
    stage_outputs.complete(out_dir)
