from kfp import dsl


def sessionize(config_json: str, pipeline_run_id: str, kfp_run_id: str, validated: dsl.Input[dsl.Dataset],
               sessionized: dsl.Output[dsl.Dataset]):
    """Spark sessionization into sessions, training pages and co-engagement pairs (genrec.stages.sessionize)."""
    from genrec.config import config_from_json
    from genrec.stages.sessionize import run_sessionize

    run_sessionize(config_from_json(config_json), validated.path, sessionized.path, pipeline_run_id or kfp_run_id)
