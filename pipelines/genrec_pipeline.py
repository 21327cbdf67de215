"""The genrec pipeline (KFP v2): ingest -> validate-events -> sessionize -> validate-pages -> embed-items -> assign-sids
-> train-sft -> train-reward -> align -> evaluate -> gate-and-register.

Compile:  genrec compile [--image IMAGE] [--gpu-image IMAGE]   (default: pipelines/genrec_pipeline.yaml, committed
          and tested for staleness, naming the images `make image` tags)
Run here: genrec run --config configs/demo.yaml [--runner docker --image IMAGE]   (kfp.local)
"""


from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components import DEFAULT_MLFLOW_SECRET, MLFLOW_SECRET_KEYS, Images, build_components

PIPELINE_NAME = "genrec"
COMPILED_PATH = Path(__file__).with_name("genrec_pipeline.yaml")


def build_pipeline(images: Images = Images(), mlflow_secret: str = DEFAULT_MLFLOW_SECRET):
    """The @dsl.pipeline function whose tasks run in `images`.

    mlflow_secret: the Kubernetes Secret every task reads MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD from (on a
    cluster; kfp.local ignores it, and its tasks inherit the environment of `genrec run`). Empty: none.
    """
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
            validated = c["validate_events"](raw=raw.outputs["raw"], **common).set_display_name("validate-events")
            sessionized = c["sessionize"](validated=validated.outputs["validated"], **common).set_display_name("sessionize")
            sessionized.set_memory_request("4G").set_cpu_request("2")
            pages = c["validate_pages"](sessionized=sessionized.outputs["sessionized"], **common).set_display_name("validate-pages")
            embedded = c["embed_items"](raw=raw.outputs["raw"], validated=validated.outputs["validated"],
                                        pages=pages.outputs["pages"], **common).set_display_name("embed-items")
            embedded.set_memory_request("4G").set_cpu_request("2")
            sids = c["assign_sids"](embeddings=embedded.outputs["embeddings"], validated=validated.outputs["validated"],
                                    **common).set_display_name("assign-sids")
            trained = c["train_sft"](pages=pages.outputs["pages"], sids=sids.outputs["sids"], **common).set_display_name("train-sft")
            trained.set_memory_request("8G").set_cpu_request("2")
            rewarded = c["train_reward"](pages=pages.outputs["pages"], sids=sids.outputs["sids"], raw=raw.outputs["raw"],
                                         **common).set_display_name("train-reward")
            rewarded.set_memory_request("4G").set_cpu_request("2")
            aligned = c["align"](sft=trained.outputs["model"], reward=rewarded.outputs["reward"], pages=pages.outputs["pages"],
                                 sids=sids.outputs["sids"], embeddings=embedded.outputs["embeddings"],
                                 **common).set_display_name("align")
            aligned.set_memory_request("8G").set_cpu_request("2")
            evaluated = c["evaluate"](model=aligned.outputs["model"], sft=trained.outputs["model"],
                                      reward=rewarded.outputs["reward"], raw=raw.outputs["raw"], pages=pages.outputs["pages"],
                                      sids=sids.outputs["sids"], **common).set_display_name("evaluate")
            gated = c["gate_and_register"](evaluation=evaluated.outputs["evaluation"], model=aligned.outputs["model"],
                                           sids=sids.outputs["sids"], **common).set_display_name("gate-and-register")
        for task in (finish, raw, validated, sessionized, pages, embedded, sids, trained, rewarded, aligned, evaluated, gated):
            task.set_caching_options(False)  # every run is tracked in MLflow; a cache hit would log nothing
            if mlflow_secret:
                kubernetes.use_secret_as_env(task, mlflow_secret, {key: key for key in MLFLOW_SECRET_KEYS})

    return genrec_pipeline


def compile_pipeline(path=COMPILED_PATH, images: Images = Images(), mlflow_secret: str = DEFAULT_MLFLOW_SECRET) -> Path:
    """Compile the pipeline for `images` to YAML (the file a Kubernetes KFP installation runs)."""
    compiler.Compiler().compile(build_pipeline(images, mlflow_secret), package_path=str(path))
    return Path(path)
