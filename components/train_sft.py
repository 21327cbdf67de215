from kfp import dsl


def train_sft(config_json: str, pipeline_run_id: str, kfp_run_id: str, pages: dsl.Input[dsl.Dataset],
              sids: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model]):
    """Page-wise next-token SFT of the GenRec model with DeepSpeed (genrec.stages.train_sft), in this process, as
    torchrun ranks in this pod or as a TrainJob (cluster.training.launcher; genrec.train.launch)."""
    from genrec.config import config_from_json
    from genrec.train.launch import run_training

    run_training(config_from_json(config_json), "train-sft", {"pages": pages.path, "sids": sids.path}, model.path,
                 pipeline_run_id or kfp_run_id)
