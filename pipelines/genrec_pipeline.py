"""The genrec pipeline (KFP v2): ingest -> validate-events -> sessionize -> validate-pages -> embed-items -> assign-sids
-> train-sft -> train-reward -> align -> evaluate -> gate-and-register, inside an exit handler (finish-run).

Compile:  genrec compile [--config FILE] [--image IMAGE] [--gpu-image IMAGE]   (default: pipelines/genrec_pipeline.yaml
          from the default config, committed and tested for staleness)
Submit:   genrec submit --host URL --config FILE   (compiles the same way and starts a run)
Run here: genrec run --config configs/demo.yaml [--runner docker --image IMAGE]   (kfp.local)

The Kubernetes side of every task (resources, GPUs, Secrets, volumes, retries) comes from the config's `cluster`
section (genrec.cluster_config), applied by `for_kubernetes` below.
"""


from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components import Images, build_components
from genrec.config import PipelineConfig, load_config

PIPELINE_NAME = "genrec"
COMPILED_PATH = Path(__file__).with_name("genrec_pipeline.yaml")

# Every pod gets an emptyDir here, sized by cluster.scratch_size; temporary files and Spark's spill go to it.
SCRATCH = "/scratch"
MLFLOW_LOGIN_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
OBJECT_STORE_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OBJECT_STORE_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
# Tasks that keep DeepSpeed checkpoints (on cluster.checkpoint_pvc when set).
CHECKPOINTING_TASKS = ("train_sft", "align")


def for_kubernetes(task: dsl.PipelineTask, name: str, cfg: PipelineConfig) -> None:
    """Apply the config's `cluster` section to one task: resources, GPU, scheduling, identity, Secrets, volumes and
    retries. Only names of Secrets and ConfigMaps go into the YAML, never their values."""
    c = cfg.cluster
    r = c.resources_of(name)
    task.set_cpu_request(r.cpu_request).set_cpu_limit(r.cpu_limit)
    task.set_memory_request(r.memory_request).set_memory_limit(r.memory_limit)
    if c.gets_gpu(name):
        task.set_accelerator_type(c.gpu.accelerator).set_accelerator_limit(c.gpu.count)
        for key, value in c.gpu.node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for t in c.gpu.tolerations:
            kubernetes.add_toleration(task, key=t.key or None, operator=t.operator, value=t.value or None,
                                      effect=t.effect or None)
    if c.retry.retries:
        task.set_retry(c.retry.retries, backoff_duration=f"{c.retry.backoff_s}s", backoff_factor=c.retry.backoff_factor,
                       backoff_max_duration=f"{c.retry.backoff_max_s}s")
    if c.timeout_s:
        kubernetes.set_timeout(task, c.timeout_s)
    # The images' user owns HOME and has a passwd entry (Spark's Hadoop login needs one); group 0 can write /work.
    kubernetes.set_security_context(task, run_as_user=c.run_as_user, run_as_group=0, run_as_non_root=True)
    if c.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(c.image_pull_secrets))
    kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH, size_limit=c.scratch_size)
    task.set_env_variable("TMPDIR", SCRATCH).set_env_variable("SPARK_LOCAL_DIRS", SCRATCH)
    if c.mlflow_secret:
        keys = MLFLOW_LOGIN_KEYS if c.tracking_config_map else ("MLFLOW_TRACKING_URI", *MLFLOW_LOGIN_KEYS)
        kubernetes.use_secret_as_env(task, c.mlflow_secret, {key: key for key in keys})
    if c.tracking_config_map:
        kubernetes.use_config_map_as_env(task, c.tracking_config_map, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
    if c.object_store_secret:
        kubernetes.use_secret_as_env(task, c.object_store_secret, {key: key for key in OBJECT_STORE_KEYS})
    if c.object_store_config_map:
        kubernetes.use_config_map_as_env(task, c.object_store_config_map, {k: k for k in OBJECT_STORE_SETTINGS},
                                         optional=True)
    if c.checkpoint_pvc and name in CHECKPOINTING_TASKS:
        kubernetes.mount_pvc(task, pvc_name=c.checkpoint_pvc, mount_path=cfg.run.checkpoint_root)


def build_pipeline(cfg: PipelineConfig, images: Images, on_kubernetes: bool = True):
    """The @dsl.pipeline function whose tasks run in `images`, with the Kubernetes settings of cfg.cluster when
    `on_kubernetes` (kfp.local runs leave them out: no Secrets, no volumes, no /scratch there)."""
    c = build_components(images)

    @dsl.pipeline(name=PIPELINE_NAME, description="GenRec training pipeline: logs -> validated training pages -> semantic IDs -> "
                                                         "page-wise SFT -> reward model -> GRPO-SR -> offline evaluation -> gate and registry.")
    def genrec_pipeline(config_json: str, pipeline_run_id: str = ""):
        """config_json: the fully resolved genrec config (genrec config-show --json). pipeline_run_id: groups the
        stages' MLflow runs under one parent run; empty on a cluster means KFP's own job id."""
        common = dict(config_json=config_json, pipeline_run_id=pipeline_run_id, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        # Ends the MLflow parent run with the pipeline's status, after the last task or a failed one.
        finish = c["finish_run"](**common).set_display_name("finish-run")
        with dsl.ExitHandler(finish, name="genrec-stages"):
            raw = c["ingest"](**common).set_display_name("ingest")
            # The data stages hand each other their tables' references as a string (genrec.data.tables.handoff):
            # no task downloads a table; each reads what it needs where its producer wrote it (run.data_root).
            raw_tables = raw.outputs["Output"]
            validated = c["validate_events"](raw=raw_tables, **common).set_display_name("validate-events")
            validated_tables = validated.outputs["Output"]
            sessionized = c["sessionize"](validated=validated_tables, **common).set_display_name("sessionize")
            pages = c["validate_pages"](sessionized=sessionized.outputs["Output"], **common).set_display_name("validate-pages")
            page_tables = pages.outputs["Output"]
            embedded = c["embed_items"](raw=raw_tables, validated=validated_tables, pages=page_tables,
                                        **common).set_display_name("embed-items")
            sids = c["assign_sids"](embeddings=embedded.outputs["embeddings"], validated=validated_tables,
                                    **common).set_display_name("assign-sids")
            trained = c["train_sft"](pages=page_tables, sids=sids.outputs["sids"], **common).set_display_name("train-sft")
            rewarded = c["train_reward"](pages=page_tables, sids=sids.outputs["sids"], raw=raw_tables,
                                         **common).set_display_name("train-reward")
            aligned = c["align"](sft=trained.outputs["model"], reward=rewarded.outputs["reward"], pages=page_tables,
                                 sids=sids.outputs["sids"], embeddings=embedded.outputs["embeddings"],
                                 raw=raw_tables, **common).set_display_name("align")
            evaluated = c["evaluate"](model=aligned.outputs["model"], sft=trained.outputs["model"],
                                      reward=rewarded.outputs["reward"], raw=raw_tables, pages=page_tables,
                                      sids=sids.outputs["sids"], **common).set_display_name("evaluate")
            gated = c["gate_and_register"](evaluation=evaluated.outputs["evaluation"], model=aligned.outputs["model"],
                                           sids=sids.outputs["sids"], **common).set_display_name("gate-and-register")
        tasks = {"finish_run": finish, "ingest": raw, "validate_events": validated, "sessionize": sessionized,
                 "validate_pages": pages, "embed_items": embedded, "assign_sids": sids, "train_sft": trained,
                 "train_reward": rewarded, "align": aligned, "evaluate": evaluated, "gate_and_register": gated}
        for name, task in tasks.items():
            task.set_caching_options(False)  # every run is tracked in MLflow; a cache hit would log nothing
            if on_kubernetes:
                for_kubernetes(task, name, cfg)

    return genrec_pipeline


def compile_pipeline(path=COMPILED_PATH, cfg: PipelineConfig | None = None, images: Images | None = None) -> Path:
    """Compile the pipeline for a Kubernetes KFP installation to YAML, with the `cluster` section of `cfg` (default:
    the default config) and `images` (default: those of cfg.cluster)."""
    cfg = cfg or load_config()
    images = images or Images.resolve(cfg.cluster)
    compiler.Compiler().compile(build_pipeline(cfg, images), package_path=str(path))
    return Path(path)
