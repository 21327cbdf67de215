from kfp import dsl


def validate_events(config_json: str, pipeline_run_id: str, kfp_run_id: str, raw: str,
                    validated: dsl.Output[dsl.Dataset], report: dsl.Output[dsl.Markdown],
                    page: dsl.Output[dsl.HTML]) -> str:
    """Great Expectations on events and items; quarantine; Data Docs (genrec.stages.validate_events). Takes ingest's
    handoff, returns its own (genrec.data.tables)."""
    import os
    import shutil
    import tempfile

    from genrec.config import config_from_json
    from genrec.data.tables import handoff, receive
    from genrec.stage_outputs import work_dir
    from genrec.stages.validate_events import run_validate_events

    try:
        run_validate_events(config_from_json(config_json), receive(raw, tempfile.mkdtemp()), validated.path,
                            pipeline_run_id or kfp_run_id)
    finally:  # the reports exist unless the stage failed before validating anything; a stage that stopped left
        # them in its work folder (genrec.stage_outputs), since its output never became complete
        folder = validated.path if os.path.exists(f"{validated.path}/report.md") else str(work_dir(validated.path))
        for name, output in (("report.md", report), ("report.html", page)):
            if os.path.exists(f"{folder}/{name}"):
                shutil.copyfile(f"{folder}/{name}", output.path)
    return handoff(validated.path)
