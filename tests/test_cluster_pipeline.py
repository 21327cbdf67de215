"""The compiled pipeline as a cluster gets it: per task the image, resources, GPU, scheduling, identity, Secrets,
volumes and retries of the config's `cluster` section, asserted on the IR (no Kubernetes runs here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import DEFAULT_GPU_IMAGE, DEFAULT_IMAGE, Images
from genrec.config import load_config
from genrec.errors import ConfigError
from pipelines.genrec_pipeline import compile_pipeline

REPO = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "validate-events", "sessionize", "validate-pages", "embed-items", "assign-sids", "train-sft",
          "train-reward", "align", "evaluate", "gate-and-register"]
TASKS = [*STAGES, "finish-run"]


class Compiled:
    """The two documents of a compiled pipeline, by task name."""

    def __init__(self, path: Path):
        self.text = path.read_text()
        self.ir, platform = yaml.safe_load_all(self.text)
        self.k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        self.executors = self.ir["deploymentSpec"]["executors"]
        self.tasks = {**self.ir["root"]["dag"]["tasks"], **self.ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]}

    def container(self, task: str) -> dict:
        return self.executors[f"exec-{task}"]["container"]

    def kube(self, task: str) -> dict:
        return self.k8s[f"exec-{task}"]

    def secrets(self, task: str) -> dict[str, set]:
        return {s["secretName"]: {k["envVar"] for k in s["keyToEnv"]} for s in self.kube(task).get("secretAsEnv", [])}

    def config_maps(self, task: str) -> dict[str, set]:
        return {c["configMapName"]: {k["envVar"] for k in c["keyToEnv"]}
                for c in self.kube(task).get("configMapAsEnv", [])}


def _compile(tmp_path, config=None, *overrides, images=None) -> Compiled:
    cfg = load_config(config, list(overrides))
    return Compiled(compile_pipeline(tmp_path / "p.yaml", cfg, images))


@pytest.fixture(scope="module")
def cpu(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("cpu"))


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("gpu"), REPO / "configs" / "cluster-gpu.yaml")


def test_all_stages_inside_the_exit_handler(cpu):
    root = cpu.ir["root"]["dag"]["tasks"]
    assert root["finish-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["finish-run"]["dependentTasks"] == ["exit-handler-1"]
    assert root["finish-run"]["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == "exit-handler-1"
    assert sorted(cpu.ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]) == sorted(STAGES)


def test_every_task_has_requests_limits_retries_and_its_user(cpu):
    defaults = load_config().cluster
    for task in TASKS:
        want = defaults.resources_of(task.replace("-", "_"))
        res = cpu.container(task)["resources"]
        assert (res["resourceCpuRequest"], res["resourceCpuLimit"], res["resourceMemoryRequest"],
                res["resourceMemoryLimit"]) == (want.cpu_request, want.cpu_limit, want.memory_request,
                                                want.memory_limit), task
        assert "accelerator" not in res, f"{task} asks for a GPU on a CPU-only cluster"
        assert cpu.tasks[task]["retryPolicy"] == {"maxRetryCount": 2, "backoffDuration": "30s", "backoffFactor": 2.0,
                                                  "backoffMaxDuration": "600s"}, task
        assert cpu.container(task)["image"] == DEFAULT_IMAGE
        kube = cpu.kube(task)
        assert kube["securityContext"] == {"runAsUser": "10001", "runAsGroup": "0", "runAsNonRoot": True}
        assert kube["emptyDirMounts"] == [{"volumeName": "scratch", "mountPath": "/scratch", "sizeLimit": "20Gi"}]
        assert {e["name"]: e["value"] for e in cpu.container(task)["env"]} == {"TMPDIR": "/scratch",
                                                                              "SPARK_LOCAL_DIRS": "/scratch"}
        # Credentials by Secret name only; no volume for checkpoints without cluster.checkpoint_pvc.
        assert cpu.secrets(task) == {"genrec-mlflow": {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                                                      "MLFLOW_TRACKING_PASSWORD"}}
        assert "pvcMount" not in kube and "nodeSelector" not in kube and "tolerations" not in kube
    assert cpu.container("train-sft")["resources"]["resourceMemoryLimit"] == "16G"
    # No tracking URI or any other value of a Secret is baked in.
    assert "http://" not in cpu.text and "sqlite:" not in cpu.text


def test_gpu_tasks_get_the_gpu_image_gpus_node_selector_and_tolerations(gpu):
    for task in ("train-sft", "align"):
        c, kube = gpu.container(task), gpu.kube(task)
        assert c["image"] == DEFAULT_GPU_IMAGE
        acc = c["resources"]["accelerator"]
        assert (acc["resourceType"], acc["resourceCount"]) == ("nvidia.com/gpu", "1")
        assert (c["resources"]["resourceCpuRequest"], c["resources"]["resourceMemoryLimit"]) == ("8", "64Gi")
        assert kube["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
        assert kube["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        # Checkpoints on the volume, mounted where run.checkpoint_root says.
        (pvc,) = kube["pvcMount"]
        assert (pvc["mountPath"], pvc["constant"]) == ("/checkpoints", "genrec-checkpoints")
    for task in set(TASKS) - {"train-sft", "align"}:
        c, kube = gpu.container(task), gpu.kube(task)
        assert c["image"] == DEFAULT_IMAGE and "accelerator" not in c["resources"], task
        assert "nodeSelector" not in kube and "tolerations" not in kube and "pvcMount" not in kube, task
    assert gpu.container("sessionize")["resources"]["resourceMemoryRequest"] == "16Gi"
    assert gpu.tasks["sessionize"]["retryPolicy"]["maxRetryCount"] == 3
    assert gpu.tasks["sessionize"]["retryPolicy"]["backoffDuration"] == "60s"
    assert gpu.kube("sessionize")["emptyDirMounts"][0]["sizeLimit"] == "50Gi"


def test_credentials_and_settings_come_from_named_secrets_and_config_maps(gpu):
    for task in TASKS:
        # The URI from a ConfigMap, the login and the object store's keys from Secrets.
        assert gpu.secrets(task) == {"genrec-mlflow": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
                                     "genrec-object-store": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}}, task
        assert gpu.config_maps(task) == {"genrec-tracking": {"MLFLOW_TRACKING_URI"},
                                         "genrec-object-store": {"AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}}, task
    optional = {c["configMapName"]: c.get("optional", False) for c in gpu.kube("ingest")["configMapAsEnv"]}
    assert optional == {"genrec-tracking": False, "genrec-object-store": True}


def test_images_from_flags_win_and_embed_items_can_take_a_gpu(tmp_path):
    cfg = load_config(REPO / "configs" / "cluster-gpu.yaml", ["cluster.gpu.tasks=[embed_items,train_sft,align]",
                                                             "cluster.gpu.count=2", "cluster.retry.retries=0",
                                                             "cluster.mlflow_secret=", "cluster.tracking_config_map=",
                                                             "cluster.object_store_secret=",
                                                             "cluster.object_store_config_map=",
                                                             "cluster.image_pull_secrets=[regcred]",
                                                             "cluster.timeout_s=7200"])
    c = Compiled(compile_pipeline(tmp_path / "p.yaml", cfg, Images.resolve(cfg.cluster, "reg/cpu:1", "reg/gpu:1")))
    assert c.container("embed-items")["image"] == "reg/gpu:1"
    assert c.container("embed-items")["resources"]["accelerator"]["resourceCount"] == "2"
    assert c.container("ingest")["image"] == "reg/cpu:1"
    for task in TASKS:
        assert "retryPolicy" not in c.tasks[task]
        assert not c.secrets(task) and not c.config_maps(task)
        assert [s["secretName"] for s in c.kube(task)["imagePullSecret"]] == ["regcred"]
        assert c.kube(task)["activeDeadlineSeconds"] == "7200"


def test_training_as_trainjob_leaves_a_small_watcher_in_the_pipeline(tmp_path):
    c = _compile(tmp_path, REPO / "configs" / "cluster-gpu.yaml", "cluster.training.launcher=trainjob",
                 "cluster.training.num_nodes=2")
    watcher = load_config().cluster.resources.finish_run
    for task in ("train-sft", "align"):
        res, kube = c.container(task)["resources"], c.kube(task)
        assert c.container(task)["image"] == DEFAULT_IMAGE and "accelerator" not in res
        assert (res["resourceCpuLimit"], res["resourceMemoryLimit"]) == (watcher.cpu_limit, watcher.memory_limit)
        assert "nodeSelector" not in kube and "tolerations" not in kube
        assert kube["pvcMount"][0]["mountPath"] == "/checkpoints"  # it stages inputs and collects outputs there


def test_bad_cluster_settings_are_refused_with_the_key():
    with pytest.raises(ConfigError, match="run.checkpoint_root"):
        load_config(None, ["cluster.checkpoint_pvc=genrec-checkpoints"])
    with pytest.raises(ConfigError, match="cluster.resources.sessionize.*memory_limit 1G is below memory_request 8G"):
        load_config(None, ["cluster.resources.sessionize={cpu_request: 2, cpu_limit: 4, memory_request: 8G, "
                           "memory_limit: 1G}"])
    with pytest.raises(ConfigError, match="cluster.resources.sessionize.cpu_request': Field required"):
        load_config(None, ["cluster.resources.sessionize.cpu_limit=8"])
    with pytest.raises(ConfigError, match="not a Kubernetes quantity"):
        load_config(None, ["cluster.gpu.resources={cpu_request: lots, cpu_limit: 4, memory_request: 8G, "
                           "memory_limit: 8G}"])
    with pytest.raises(ConfigError, match="processes_per_node=4 is more than the cluster.gpu.count=1"):
        load_config(REPO / "configs" / "cluster-gpu.yaml", ["cluster.training.launcher=torchrun",
                                                            "cluster.training.processes_per_node=4"])
    with pytest.raises(ConfigError, match="launcher=trainjob needs cluster.checkpoint_pvc"):
        load_config(None, ["cluster.training.launcher=trainjob"])
    with pytest.raises(ConfigError, match="spark.mode=operator needs run.data_root=s3://"):
        load_config(None, ["cluster.spark.mode=operator"])
    with pytest.raises(ConfigError, match="cluster.gpu.tasks"):
        load_config(None, ["cluster.gpu.tasks=[train]"])


def test_compile_command_reads_the_config(tmp_path):
    out = tmp_path / "gpu.yaml"
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "compile", "--config", "configs/cluster-gpu.yaml",
                           "--out", str(out), "--image", "reg/genrec:1", "cluster.gpu.count=4"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "4 x nvidia.com/gpu for train_sft, align" in proc.stdout and "PVC genrec-checkpoints" in proc.stdout
    c = Compiled(out)
    assert c.container("train-sft")["resources"]["accelerator"]["resourceCount"] == "4"
    assert c.container("ingest")["image"] == "reg/genrec:1"


DATA_TASKS = ("ingest", "validate-events", "sessionize", "validate-pages")


def test_the_data_stages_pass_references_not_datasets(cpu):
    """Every edge out of a data stage is a string parameter (its tables' references, genrec.data.tables.handoff):
    no task takes a data stage's output artifact, so no pod downloads a table; the tables are read in place."""
    edges = []
    for name, task in cpu.tasks.items():
        inputs = task.get("inputs", {})
        for arg in inputs.get("artifacts", {}).values():
            producer = arg.get("taskOutputArtifact", {}).get("producerTask")
            assert producer not in DATA_TASKS, f"{name} downloads an artifact of {producer}"
        for key, arg in inputs.get("parameters", {}).items():
            producer = arg.get("taskOutputParameter", {}).get("producerTask")
            if producer in DATA_TASKS:
                edges.append((producer, name, key))
                assert arg["taskOutputParameter"]["outputParameterKey"] == "Output"
    consumers = {producer: {name for p, name, _ in edges if p == producer} for producer in DATA_TASKS}
    assert consumers == {"ingest": {"validate-events", "embed-items", "train-reward", "align", "evaluate"},
                         "validate-events": {"sessionize", "embed-items", "assign-sids"},
                         "sessionize": {"validate-pages"},
                         "validate-pages": {"embed-items", "train-sft", "train-reward", "align", "evaluate"}}
    for producer in DATA_TASKS:
        outputs = cpu.ir["components"][cpu.tasks[producer]["componentRef"]["name"]]["outputDefinitions"]
        assert outputs["parameters"]["Output"]["parameterType"] == "STRING"
