from kfp import dsl


def validate_pages(config_json: str, pipeline_run_id: str, kfp_run_id: str, sessionized: str,
                   pages: dsl.Output[dsl.Dataset], report: dsl.Output[dsl.Markdown],
                   page: dsl.Output[dsl.HTML]) -> str:
    """Great Expectations on the training pages; quarantine; Data Docs (genrec.stages.validate_pages). Takes
    sessionize's handoff, returns its own (genrec.data.tables)."""
    import os
    import shutil
    import tempfile

    from genrec.config import config_from_json
    from genrec.data.tables import handoff, receive
    from genrec.stage_outputs import work_dir
    from genrec.stages.validate_pages import run_validate_pages

    try:
        run_validate_pages(config_from_json(config_json), receive(sessionized, tempfile.mkdtemp()), pages.path,
                           pipeline_run_id or kfp_run_id)
    finally:  # the reports exist unless the stage failed before validating anything; a stage that stopped left
        # them in its work folder (genrec.stage_outputs), since its output never became complete
        folder = pages.path if os.path.exists(f"{pages.path}/report.md") else str(work_dir(pages.path))
        for name, output in (("report.md", report), ("report.html", page)):
            if os.path.exists(f"{folder}/{name}"):
                shutil.copyfile(f"{folder}/{name}", output.path)
    return handoff(pages.path)
