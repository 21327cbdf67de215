from kfp import dsl


def embed_items(config_json: str, pipeline_run_id: str, kfp_run_id: str, raw: dsl.Input[dsl.Dataset],
                validated: dsl.Input[dsl.Dataset], pages: dsl.Input[dsl.Dataset], embeddings: dsl.Output[dsl.Dataset]):
    """Text (+ image) item embeddings, fine-tuned on co-engagement pairs (genrec.stages.embed_items)."""
    from genrec.config import config_from_json
    from genrec.stages.embed_items import run_embed_items

    run_embed_items(config_from_json(config_json), validated.path, pages.path, raw.path, embeddings.path,
                    pipeline_run_id or kfp_run_id)
