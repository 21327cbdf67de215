from kfp import dsl


def embed_items(config_json: str, pipeline_run_id: str, kfp_run_id: str, raw: str, validated: str, pages: str,
                embeddings: dsl.Output[dsl.Dataset]):
    """Text (+ image) item embeddings, fine-tuned on co-engagement pairs (genrec.stages.embed_items). raw, validated,
    pages: the data stages' handoffs (genrec.data.tables)."""
    import tempfile

    from genrec.config import config_from_json
    from genrec.data.tables import receive
    from genrec.stages.embed_items import run_embed_items

    run_embed_items(config_from_json(config_json), receive(validated, tempfile.mkdtemp()),
                    receive(pages, tempfile.mkdtemp()), receive(raw, tempfile.mkdtemp()), embeddings.path,
                    pipeline_run_id or kfp_run_id)
