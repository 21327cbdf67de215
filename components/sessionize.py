from kfp import dsl


def sessionize(config_json: str, pipeline_run_id: str, kfp_run_id: str, validated: str,
               sessionized: dsl.Output[dsl.Dataset]) -> str:
    """Spark sessionization into sessions, training pages and co-engagement pairs (genrec.stages.sessionize). Takes
    validate-events' handoff, returns its own (genrec.data.tables)."""
    import tempfile

    from genrec.config import config_from_json
    from genrec.data.tables import handoff, receive
    from genrec.stages.sessionize import run_sessionize

    run_sessionize(config_from_json(config_json), receive(validated, tempfile.mkdtemp()), sessionized.path,
                   pipeline_run_id or kfp_run_id)
    return handoff(sessionized.path)
