"""The training tasks' launchers (genrec.train.launch): torchrun ranks inside the task's pod, and a Kubeflow Trainer
TrainJob that the task creates and waits for. The TrainJob is checked against Kubeflow Trainer's generated API
models, and run end to end against a stand-in API server that plays the Trainer by running the job's command here,
on a folder standing in for the shared volume."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import sub_env
from k8s_standin import StandIn, strict_errors

REPO = Path(__file__).resolve().parents[1]
FAST = ["model.size=tiny", "sft.micro_batch_size=8", "sft.max_steps=20", "sft.checkpoint_every=10",
        "sft.log_every=10", "sft.target_types=[click]"]


def _cfg(make_cfg, *extra):
    return make_cfg(*FAST, *extra)


def test_component_runs_torchrun_ranks_in_its_pod(sft_data, tmp_path, make_cfg, monkeypatch):
    from components.train_sft import train_sft
    from genrec.data import tables

    cfg = _cfg(make_cfg, "cluster.training.launcher=torchrun", "cluster.training.processes_per_node=2")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", sub_env(tmp_path)["TORCH_EXTENSIONS_DIR"])
    out = tmp_path / "model"
    # the component gets validate-pages' handoff: the pages' reference, not the pages
    tables.record(tmp_path / "validated-pages", "pages", str(sft_data / "pages" / "pages"), ("split",))
    train_sft(cfg.to_json(), "torchrun-test", "", tables.handoff(tmp_path / "validated-pages"),
              SimpleNamespace(path=str(sft_data / "sids")), SimpleNamespace(path=str(out)))
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 20
    assert (out / "model" / "model.safetensors").is_file() and (out / "_GENREC_COMPLETE.json").exists()


def test_torchrun_failure_names_the_stage(sft_data, tmp_path, make_cfg):
    from genrec.k8s_jobs import JobFailed
    from genrec.train.launch import run_training

    cfg = _cfg(make_cfg, "cluster.training.launcher=torchrun", "cluster.training.processes_per_node=2")
    with pytest.raises(JobFailed, match="train-sft: torchrun with 2 processes exited with"):
        run_training(cfg, "train-sft", {"pages": tmp_path / "missing", "sids": sft_data / "sids"}, tmp_path / "o", "x")


def _trainjob_cfg(make_cfg, volume, *extra):
    return _cfg(make_cfg, f"run.checkpoint_root={volume}", "cluster.checkpoint_pvc=genrec-checkpoints",
                "cluster.training.launcher=trainjob", "cluster.training.processes_per_node=2",
                "cluster.training.poll_s=0.5", "cluster.training.timeout_s=900", "cluster.gpu.count=1",
                "cluster.gpu.node_selector={nvidia.com/gpu.present: 'true'}",
                "cluster.tracking_config_map=genrec-tracking", *extra)


def test_trainjob_manifest_matches_kubeflow_trainer_api(make_cfg, tmp_path):
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    from genrec.train.launch import stage_argv, trainjob_manifest

    cfg = _trainjob_cfg(make_cfg, tmp_path, "cluster.training.num_nodes=4", "cluster.image_pull_secrets=[regcred]")
    argv = stage_argv("train-sft", Path("/checkpoints/r/c.yaml"), {"pages": Path("/p"), "sids": Path("/s")},
                      Path("/o"), "r")
    m = trainjob_manifest(cfg, "train-sft", "genrec-train-sft-r", argv)
    assert strict_errors(TrainerV1alpha1TrainJob, m) == []
    trainer = m["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 2)
    assert trainer["command"][:4] == ["torchrun", "-m", "genrec.cli", "train-sft"]
    assert trainer["image"].startswith("ghcr.io/genrec/genrec-gpu:")
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e["valueFrom"] for e in trainer["env"]}
    assert env["MLFLOW_TRACKING_URI"] == {"configMapKeyRef": {"name": "genrec-tracking", "key": "MLFLOW_TRACKING_URI"}}
    assert env["MLFLOW_TRACKING_PASSWORD"]["secretKeyRef"]["name"] == "genrec-mlflow"
    pod = m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "shared", "persistentVolumeClaim": {"claimName": "genrec-checkpoints"}}]
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == str(tmp_path)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["imagePullSecrets"] == [{"name": "regcred"}]
    # The check can fail: a misspelled field is reported.
    m["spec"]["trainer"]["numProcsPerNode"] = 2
    assert any("numProcsPerNode" in e for e in strict_errors(TrainerV1alpha1TrainJob, m))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeTrainer:
    """Runs a TrainJob's command on this machine as one node, as the torch-distributed runtime would (PET_*)."""

    def __init__(self, env):
        self.env, self.exit, self.started, self.pods = env, {}, {}, {}

    def create(self, obj):
        t = obj["spec"]["trainer"]
        self.started[obj["metadata"]["name"]] = time.time()
        env = dict(self.env, PET_NNODES="1", PET_NPROC_PER_NODE=str(t["numProcPerNode"]), PET_NODE_RANK="0",
                   PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(_free_port()),
                   PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        try:
            proc = subprocess.run(t["command"], env=env, capture_output=True, text=True, timeout=600)
            rc, err = proc.returncode, proc.stderr
        except Exception as exc:  # a node that could not run still fails the job, so the task ends rather than waits
            rc, err = 1, repr(exc)
        name = obj["metadata"]["name"]
        self.pods[f"{name}-node-0-0-x7k2p"] = ({"jobset.sigs.k8s.io/jobset-name": name},
                                               "Succeeded" if rc == 0 else "Failed", err)
        self.exit[name] = (rc, err[-2000:])

    def status(self, obj):
        name = obj["metadata"]["name"]
        if name not in self.exit:
            return {"conditions": [{"type": "Created", "status": "True"}]}
        rc, err = self.exit[name]
        kind = "Complete" if rc == 0 else "Failed"
        # The Trainer's condition says only which job failed; the rank's error is in the pod's log.
        return {"conditions": [{"type": kind, "status": "True", "reason": "JobSet" + kind,
                                "message": "jobset failed" if rc else "jobset completed"}]}


def test_trainjob_runs_on_the_shared_volume_and_its_outputs_come_back(sft_data, make_cfg, tmp_path, capsys):
    from genrec.train.launch import run_trainjob

    volume = tmp_path / "pvc"
    volume.mkdir()
    cfg = _trainjob_cfg(make_cfg, volume)
    trainer = FakeTrainer(sub_env(tmp_path))
    # pod_logs: were the job to fail, its rank's error would be in the JobFailed message
    api = StandIn(on_create=trainer.create, status_of=trainer.status, pod_logs=trainer.pods)
    try:
        run_trainjob(cfg, "train-sft", {"pages": sft_data / "pages", "sids": sft_data / "sids"}, tmp_path / "out",
                     "kfp-run-7", api_client=api.client(), namespace="team-a")
    finally:
        api.stop()
    (name,) = api.objects
    assert ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs") in api.calls
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 20
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "checkpoints").exists() and (tmp_path / "out" / "_GENREC_COMPLETE.json").exists()
    # Checkpoints stayed on the volume, where a retry of this run finds them.
    assert list((volume / "kfp-run-7" / "train-sft").glob("step-*"))
    assert f"TrainJob team-a/{name}: succeeded" in capsys.readouterr().out


def test_a_failed_trainjob_fails_the_task_with_its_message_and_a_stuck_one_is_deleted(sft_data, make_cfg, tmp_path):
    from genrec.k8s_jobs import JobFailed
    from genrec.train.launch import run_trainjob

    volume = tmp_path / "pvc"
    volume.mkdir()
    cfg = _trainjob_cfg(make_cfg, volume)
    trainer = FakeTrainer(sub_env(tmp_path))
    api = StandIn(on_create=trainer.create, status_of=trainer.status, pod_logs=trainer.pods)
    (tmp_path / "no-pages").mkdir()  # the job's stage refuses it: its error must reach the task
    try:
        with pytest.raises(JobFailed, match=r"(?s)TrainJob team-a/.* failed: JobSetFailed: jobset failed\n"
                                            r"pod .*-node-0-0-x7k2p:.*pages not found \(run validate-pages first\)"):
            run_trainjob(cfg, "train-sft", {"pages": tmp_path / "no-pages", "sids": sft_data / "sids"},
                         tmp_path / "out", "kfp-run-8", api.client(), "team-a")
    finally:
        api.stop()
    inputs = {"pages": sft_data / "pages", "sids": sft_data / "sids"}
    stuck = StandIn(status_of=lambda obj: {"conditions": [{"type": "Created", "status": "True"}]})
    cfg = _trainjob_cfg(make_cfg, volume, "cluster.training.timeout_s=2")
    try:
        with pytest.raises(JobFailed, match="did not end within 2 s"):
            run_trainjob(cfg, "train-sft", inputs, tmp_path / "out2", "kfp-run-9", stuck.client(), "team-a")
        assert len(stuck.deleted) == 1
    finally:
        stuck.stop()
    refused = StandIn(refuse_create=403)
    try:
        with pytest.raises(JobFailed, match="cannot create TrainJob .*403.*forbidden"):
            run_trainjob(cfg, "train-sft", inputs, tmp_path / "out3", "kfp-run-10", refused.client(), "team-a")
    finally:
        refused.stop()


def test_a_trainjob_volume_gets_whole_inputs_but_only_the_side_tables_reference_of_the_event_log(tmp_path):
    from genrec.train.launch import stage_argv, stage_inputs

    src = {name: tmp_path / "src" / name for name in ("sft", "reward", "pages", "sids", "embeddings", "raw")}
    for name, folder in src.items():
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "f.bin").write_bytes(b"x")
    (src["raw"] / "events.parquet.ref.json").write_text("{}")  # references: the tables stay under run.data_root
    (src["raw"] / "pseudo_exposures.parquet.ref.json").write_text("{}")
    stage_inputs("align", src, tmp_path / "vol")
    assert (tmp_path / "vol" / "sft" / "sub" / "f.bin").is_file() and (tmp_path / "vol" / "embeddings" / "sub").is_dir()
    assert sorted(p.name for p in (tmp_path / "vol" / "raw").iterdir()) == ["pseudo_exposures.parquet.ref.json"]
    (src["raw"] / "pseudo_exposures.parquet.ref.json").unlink()  # a source without the side table: an empty folder
    stage_inputs("align", src, tmp_path / "vol2")
    assert list((tmp_path / "vol2" / "raw").iterdir()) == []
    argv = stage_argv("align", Path("/c.yaml"), {n: Path(f"/v/{n}") for n in src}, Path("/o"), "r")
    assert argv[argv.index("--raw") + 1] == "/v/raw" and argv[argv.index("--embeddings") + 1] == "/v/embeddings"
