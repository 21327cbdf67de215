from kfp import dsl


def finish_run(config_json: str, pipeline_run_id: str, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus):
    """The pipeline's exit task: ends the MLflow parent run with the pipeline's status (genrec.tracking). It runs after
    the last task, and after a failed one, wherever the pipeline runs: on a cluster nothing else would end the run."""
    from genrec.config import config_from_json
    from genrec.tracking import finish_parent_run

    state = {"SUCCEEDED": "FINISHED", "CANCELLED": "KILLED", "CANCELED": "KILLED"}.get(status.state, "FAILED")
    run_id = finish_parent_run(config_from_json(config_json), pipeline_run_id or kfp_run_id, state)
    print(f"MLflow parent run {run_id}: {state} (pipeline {status.state}{': ' + status.error_message if status.error_message else ''})")
