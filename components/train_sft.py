from kfp import dsl


def train_sft(config_json: str, pipeline_run_id: str, kfp_run_id: str, pages: dsl.Input[dsl.Dataset],
              sids: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model]):
    """Page-wise next-token SFT of the GenRec model with DeepSpeed (genrec.stages.train_sft)."""
    from genrec.config import config_from_json
    from genrec.stages.train_sft import run_train_sft

    run_train_sft(config_from_json(config_json), pages.path, sids.path, model.path, pipeline_run_id or kfp_run_id)
