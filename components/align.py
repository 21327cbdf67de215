from kfp import dsl


def align(config_json: str, pipeline_run_id: str, kfp_run_id: str, sft: dsl.Input[dsl.Model],
          reward: dsl.Input[dsl.Model], pages: str, sids: dsl.Input[dsl.Dataset],
          embeddings: dsl.Input[dsl.Dataset], raw: str, model: dsl.Output[dsl.Model]):
    """Alignment of the SFT model by align.method (GRPO-SR or LDPO) with DeepSpeed (genrec.stages.align), in this
    process, as torchrun ranks in this pod or as a TrainJob (cluster.training.launcher; genrec.train.launch). pages,
    raw: the data stages' handoffs (genrec.data.tables)."""
    import tempfile

    from genrec.config import config_from_json
    from genrec.data.tables import receive
    from genrec.train.launch import run_training

    run_training(config_from_json(config_json), "align",
                 {"sft": sft.path, "reward": reward.path, "pages": receive(pages, tempfile.mkdtemp()),
                  "sids": sids.path, "embeddings": embeddings.path, "raw": receive(raw, tempfile.mkdtemp())},
                 model.path, pipeline_run_id or kfp_run_id)
