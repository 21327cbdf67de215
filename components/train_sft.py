from kfp import dsl


def train_sft(config_json: str, pipeline_run_id: str, kfp_run_id: str, pages: str, sids: dsl.Input[dsl.Dataset],
              model: dsl.Output[dsl.Model]):
    """Page-wise next-token SFT of the GenRec model with DeepSpeed (genrec.stages.train_sft), in this process, as
    torchrun ranks in this pod or as a TrainJob (cluster.training.launcher; genrec.train.launch). pages:
    validate-pages' handoff (genrec.data.tables)."""
    import tempfile

    from genrec.config import config_from_json
    from genrec.data.tables import receive
    from genrec.train.launch import run_training

    run_training(config_from_json(config_json), "train-sft",
                 {"pages": receive(pages, tempfile.mkdtemp()), "sids": sids.path}, model.path,
                 pipeline_run_id or kfp_run_id)
