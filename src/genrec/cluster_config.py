"""The `cluster` section of the config: how the compiled pipeline's pods ask Kubernetes for resources, GPUs,
Secrets and volumes, and how Spark and training spread over the cluster.

`genrec compile --config FILE` and `genrec submit` read it when they build the pipeline YAML; a local run
(`genrec run`) ignores all of it except `spark` and `training` when they say so. The defaults describe a small
CPU-only cluster; configs/cluster-gpu.yaml is a GPU one. Nothing here holds a credential: pods get those from the
named Kubernetes Secrets.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _published(name: str) -> str:
    from genrec import __version__

    return f"ghcr.io/genrec/{name}:{__version__}"


def default_image() -> str:
    """What `make image` tags: the image of every task unless cluster.image says otherwise."""
    return _published("genrec")


def default_gpu_image() -> str:
    """What `make image-gpu` tags: the image of the GPU tasks unless cluster.gpu_image says otherwise."""
    return _published("genrec-gpu")


def default_spark_image() -> str:
    """What `make image-spark` tags: the driver and executors of a SparkApplication unless cluster.spark.image says
    otherwise."""
    return _published("genrec-spark")


TaskName = Literal["ingest", "validate_events", "sessionize", "validate_pages", "embed_items", "assign_sids",
                   "train_sft", "train_reward", "align", "evaluate", "gate_and_register", "finish_run"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(_Section):
    """One pod's CPU and memory. All four are required where a task's entry is given, so that an entry never mixes
    its values with someone else's defaults."""

    cpu_request: str = Field(description="CPU the pod is scheduled with (Kubernetes quantity: 1, 500m).")
    cpu_limit: str = Field(description="Most CPU the pod may use (throttled above).")
    memory_request: str = Field(description="Memory the pod is scheduled with (512M, 2G, 16Gi).")
    memory_limit: str = Field(description="Most memory the pod may use (the pod is killed above it).")

    @field_validator("*", mode="before")
    @classmethod
    def _number_is_a_quantity(cls, value):
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _limit_covers_request(self):
        if _quantity(self.cpu_limit) < _quantity(self.cpu_request):
            raise ValueError(f"cpu_limit {self.cpu_limit} is below cpu_request {self.cpu_request}")
        if _quantity(self.memory_limit) < _quantity(self.memory_request):
            raise ValueError(f"memory_limit {self.memory_limit} is below memory_request {self.memory_request}")
        return self


_SUFFIX = {"m": 1e-3, "": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(text: str) -> float:
    """A Kubernetes quantity as a number, to compare a limit with its request."""
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            number = text[: -len(suffix)]
            break
    else:
        suffix, number = "", text
    try:
        return float(number) * _SUFFIX[suffix]
    except ValueError:
        raise ValueError(f"not a Kubernetes quantity: {text!r} (e.g. 500m, 2, 512M, 16Gi)") from None


def _pod(cpu: str, cpu_max: str, memory: str, memory_max: str) -> Field:
    return Field(default_factory=lambda: Resources(cpu_request=cpu, cpu_limit=cpu_max, memory_request=memory,
                                                   memory_limit=memory_max), description="cpu_request, cpu_limit, "
                 f"memory_request, memory_limit (default {cpu}, {cpu_max}, {memory}, {memory_max}).")


class TaskResources(_Section):
    """Per task: sized from the demo config's peaks with headroom. Memory limit = request where a stage holds its
    data in memory, so the pod is not the first evicted under node pressure."""

    ingest: Resources = _pod("1", "2", "4G", "4G")
    validate_events: Resources = _pod("1", "2", "4G", "4G")
    sessionize: Resources = _pod("2", "4", "8G", "8G")
    validate_pages: Resources = _pod("1", "2", "4G", "4G")
    embed_items: Resources = _pod("2", "4", "8G", "8G")
    assign_sids: Resources = _pod("1", "2", "4G", "4G")
    train_sft: Resources = _pod("4", "8", "16G", "16G")
    train_reward: Resources = _pod("2", "4", "8G", "8G")
    align: Resources = _pod("4", "8", "16G", "16G")
    evaluate: Resources = _pod("2", "4", "8G", "8G")
    gate_and_register: Resources = _pod("1", "2", "4G", "4G")
    finish_run: Resources = _pod("100m", "1", "512M", "1G")


class Toleration(_Section):
    key: str = Field("", description="Taint key tolerated (empty with operator Exists: every taint).")
    operator: Literal["Equal", "Exists"] = Field("Exists", description="Equal: the taint's value must be `value`.")
    value: str = Field("", description="Taint value (operator Equal).")
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = Field("", description="Taint effect tolerated "
                                                                                               "(empty: every effect).")


class GpuConfig(_Section):
    count: int = Field(0, ge=0, description="GPUs per pod of each GPU task. 0: a CPU-only cluster; the GPU tasks run "
                                            "on CPU nodes in the CPU image.")
    tasks: list[TaskName] = Field(["train_sft", "align"], description="Tasks that get GPUs, the GPU image, the node "
                                  "selector and the tolerations (add embed_items when the encoder is large).")
    accelerator: str = Field("nvidia.com/gpu", description="KFP accelerator type: the extended resource the pods "
                                                           "request (nvidia.com/gpu, amd.com/gpu).")
    node_selector: dict[str, str] = Field({}, description="Node labels a GPU pod must match, e.g. "
                                                           "{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}.")
    tolerations: list[Toleration] = Field(
        [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        description="Taints of the GPU nodes the GPU pods tolerate.")
    resources: Resources = Field(Resources(cpu_request="8", cpu_limit="16", memory_request="64G", memory_limit="64G"),
                                 description="CPU and memory of a GPU pod, replacing the task's own `resources` "
                                             "(default 8, 16, 64G, 64G).")


class RetryConfig(_Section):
    retries: int = Field(2, ge=0, le=10, description="Times KFP retries a failed task (node lost, preemption, a "
                                                     "flaky server); 0: never.")
    backoff_s: int = Field(30, gt=0, description="Wait before the first retry.")
    backoff_factor: float = Field(2.0, ge=1, description="Each further retry waits this many times longer.")
    backoff_max_s: int = Field(600, gt=0, description="Longest wait between retries.")


class SparkConfig(_Section):
    mode: Literal["local", "operator"] = Field("local", description="local: Spark runs inside the sessionize task's "
                                               "pod (spark.master: local[*], or a spark:// cluster). operator: "
                                               "sessionize submits a SparkApplication (v1beta2) to the Kubeflow Spark "
                                               "operator and waits for it; the job reads the events and writes the "
                                               "pages under run.data_root, which must then be s3://.")
    image: str = Field("", description="Image of the driver and executors (docker/Dockerfile.spark: the CPU image "
                                       "with Spark's pod entry point and the s3a jars). Empty: "
                                       "ghcr.io/genrec/genrec-spark:<version>.")
    spark_version: str = Field("", description="Spark version the operator is told (empty: the installed pyspark's).")
    service_account: str = Field("genrec-spark", description="ServiceAccount of the driver, which creates the "
                                                             "executor pods (infra/base/pipeline creates it).")
    driver_cores: int = Field(1, gt=0, description="Cores of the driver pod.")
    driver_memory: str = Field("4g", description="Heap of the driver (Spark size: 512m, 4g).")
    executor_instances: int = Field(2, gt=0, description="Executor pods.")
    executor_cores: int = Field(2, gt=0, description="Cores per executor pod.")
    executor_memory: str = Field("4g", description="Heap per executor (Spark size).")
    timeout_s: int = Field(4 * 3600, gt=0, description="Longest the task waits for the application; then it is "
                                                       "deleted and the task fails.")
    poll_s: float = Field(10, gt=0, description="Seconds between status checks.")


class TrainingConfig(_Section):
    launcher: Literal["in_process", "torchrun", "trainjob"] = Field(
        "in_process", description="How train-sft and align run. in_process: one process in the task's pod. "
        "torchrun: processes_per_node processes in the task's pod (one per GPU). trainjob: a Kubeflow Trainer TrainJob "
        "of num_nodes pods x processes_per_node, which the task creates and waits for; its inputs, checkpoints and "
        "outputs go through cluster.checkpoint_pvc (ReadWriteMany).")
    processes_per_node: int = Field(1, gt=0, description="Training processes per pod (torchrun, trainjob).")
    num_nodes: int = Field(1, gt=0, description="Pods of a TrainJob (trainjob).")
    runtime: str = Field("torch-distributed", description="ClusterTrainingRuntime of the TrainJob (Kubeflow "
                                                          "Trainer's torch-distributed runs torchrun).")
    timeout_s: int = Field(48 * 3600, gt=0, description="Longest the task waits for a TrainJob; then it is deleted.")
    poll_s: float = Field(30, gt=0, description="Seconds between TrainJob status checks.")


class ClusterConfig(_Section):
    """How the compiled pipeline runs on Kubernetes (README: "Run on Kubernetes")."""

    image: str = Field("", description="Image of every task (make image). Empty: ghcr.io/genrec/genrec:<version>. "
                                       "genrec compile --image wins.")
    gpu_image: str = Field("", description="Image of the GPU tasks when gpu.count > 0 (make image-gpu). Empty: "
                                           "ghcr.io/genrec/genrec-gpu:<version>. genrec compile --gpu-image wins.")
    mlflow_secret: str = Field("genrec-mlflow", description="Secret whose keys MLFLOW_TRACKING_USERNAME and "
                               "MLFLOW_TRACKING_PASSWORD (and MLFLOW_TRACKING_URI unless tracking_config_map is set) "
                               "every task gets as environment variables. Empty: none.")
    tracking_config_map: str = Field("", description="ConfigMap whose key MLFLOW_TRACKING_URI every task gets (the "
                                                     "URI is not a secret). Empty: the URI comes from mlflow_secret.")
    object_store_secret: str = Field("", description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the "
                                                     "tasks that read or write s3:// paths (Spark's s3a, the "
                                                     "training checkpoints). Empty: none.")
    object_store_config_map: str = Field("", description="ConfigMap whose optional keys AWS_ENDPOINT_URL and "
                                                         "AWS_DEFAULT_REGION every task gets (MinIO, Ceph or a "
                                                         "region). Empty: none.")
    image_pull_secrets: list[str] = Field([], description="Secrets of a private registry the pods pull with.")
    run_as_user: int = Field(10001, ge=1, description="UID of every pod (the images' user, which owns HOME and has a "
                                                      "passwd entry, as Spark needs).")
    resources: TaskResources = Field(default_factory=TaskResources, description="CPU and memory per task.")
    scratch_size: str = Field("20Gi", description="Size limit of the emptyDir every pod gets at /scratch (TMPDIR, "
                                                  "Spark's local dirs): what a task writes locally counts against it, "
                                                  "not against the node's root disk unseen.")
    gpu: GpuConfig = Field(default_factory=GpuConfig, description="GPUs of the training tasks.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retries of failed tasks, with backoff.")
    checkpoint_pvc: str = Field("", description="PersistentVolumeClaim mounted at run.checkpoint_root in train-sft "
                                                "and align (infra/ creates genrec-checkpoints), so that a retried or "
                                                "preempted task resumes from its newest checkpoint. Empty: none.")
    timeout_s: int = Field(0, ge=0, description="Longest a task may run before Kubernetes stops it (0: no limit).")
    spark: SparkConfig = Field(default_factory=SparkConfig, description="Where sessionize's Spark runs.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="How the training tasks spread "
                                                                                 "over processes and pods.")

    @model_validator(mode="after")
    def _torchrun_ranks_fit_the_gpus(self):
        t = self.training
        if t.launcher == "torchrun" and self.gpu.count and t.processes_per_node > self.gpu.count:
            raise ValueError(f"cluster.training.processes_per_node={t.processes_per_node} is more than the "
                             f"cluster.gpu.count={self.gpu.count} GPUs of the pod (one rank per GPU)")
        return self

    @model_validator(mode="after")
    def _trainjob_needs_the_shared_volume(self):
        if self.training.launcher == "trainjob" and not self.checkpoint_pvc:
            raise ValueError("cluster.training.launcher=trainjob needs cluster.checkpoint_pvc: the TrainJob's pods "
                             "read their inputs and write checkpoints and the model there")
        return self

    def gpu_job(self, task: str) -> bool:
        """Whether the task's training runs on GPUs (in its own pod, or in the pods of its TrainJob)."""
        return bool(self.gpu.count) and task in self.gpu.tasks

    def gets_gpu(self, task: str) -> bool:
        """Whether the task's own pod asks for GPUs (not when it only watches a TrainJob that has them)."""
        return self.gpu_job(task) and not self.watches_trainjob(task)

    def watches_trainjob(self, task: str) -> bool:
        return self.training.launcher == "trainjob" and task in ("train_sft", "align")

    def resources_of(self, task: str) -> Resources:
        """What one task's pod asks for: a watcher's for a task whose training runs as a TrainJob, the GPU pod's
        for a GPU task, else its own."""
        if self.watches_trainjob(task):
            return self.resources.finish_run
        if self.gets_gpu(task):
            return self.gpu.resources
        return getattr(self.resources, task)

    def training_resources(self, task: str) -> Resources:
        """What each pod of a TrainJob for the task asks for (besides its GPUs)."""
        return self.gpu.resources if self.gpu_job(task) else getattr(self.resources, task)
