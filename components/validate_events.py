from kfp import dsl


def validate_events(config_json: str, pipeline_run_id: str, kfp_run_id: str, raw: dsl.Input[dsl.Dataset],
                    validated: dsl.Output[dsl.Dataset], report: dsl.Output[dsl.Markdown]):
    """Great Expectations on events and items; quarantine; Data Docs (genrec.stages.validate_events)."""
    import os
    import shutil

    from genrec.config import config_from_json
    from genrec.stages.validate_events import run_validate_events

    try:
        run_validate_events(config_from_json(config_json), raw.path, validated.path, pipeline_run_id or kfp_run_id)
    finally:  # the report exists unless the stage failed before validating anything
        if os.path.exists(f"{validated.path}/report.md"):
            shutil.copyfile(f"{validated.path}/report.md", report.path)
