from kfp import dsl


def align(config_json: str, pipeline_run_id: str, kfp_run_id: str, sft: dsl.Input[dsl.Model],
          reward: dsl.Input[dsl.Model], pages: dsl.Input[dsl.Dataset], sids: dsl.Input[dsl.Dataset],
          embeddings: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model]):
    """GRPO-SR alignment of the SFT model with DeepSpeed (genrec.stages.align)."""
    from genrec.config import config_from_json
    from genrec.stages.align import run_align

    run_align(config_from_json(config_json), sft.path, reward.path, pages.path, sids.path, embeddings.path, model.path,
              pipeline_run_id or kfp_run_id)
