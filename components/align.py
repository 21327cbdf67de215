from kfp import dsl


def align(config_json: str, pipeline_run_id: str, kfp_run_id: str, sft: dsl.Input[dsl.Model],
          reward: dsl.Input[dsl.Model], pages: dsl.Input[dsl.Dataset], sids: dsl.Input[dsl.Dataset],
          embeddings: dsl.Input[dsl.Dataset], raw: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model]):
    """Alignment of the SFT model by align.method (GRPO-SR or LDPO) with DeepSpeed (genrec.stages.align), in this
    process, as torchrun ranks in this pod or as a TrainJob (cluster.training.launcher; genrec.train.launch)."""
    from genrec.config import config_from_json
    from genrec.train.launch import run_training

    run_training(config_from_json(config_json), "align", {"sft": sft.path, "reward": reward.path, "pages": pages.path,
                                                          "sids": sids.path, "embeddings": embeddings.path,
                                                          "raw": raw.path},
                 model.path, pipeline_run_id or kfp_run_id)
