from kfp import dsl


def ingest(config_json: str, pipeline_run_id: str, kfp_run_id: str, raw: dsl.Output[dsl.Dataset]) -> str:
    """Simulate the logs or read a dataset into canonical events and items (genrec.stages.ingest). Returns the
    handoff the next tasks take (the tables' references: genrec.data.tables.handoff); `raw` keeps the folder."""
    from genrec.config import config_from_json
    from genrec.data.tables import handoff
    from genrec.stages.ingest import run_ingest

    run_ingest(config_from_json(config_json), raw.path, pipeline_run_id or kfp_run_id)
    return handoff(raw.path)
