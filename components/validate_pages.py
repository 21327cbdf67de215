from kfp import dsl


def validate_pages(config_json: str, pipeline_run_id: str, kfp_run_id: str, sessionized: dsl.Input[dsl.Dataset],
                   pages: dsl.Output[dsl.Dataset], report: dsl.Output[dsl.Markdown]):
    """Great Expectations on the training pages; quarantine; Data Docs (genrec.stages.validate_pages)."""
    import os
    import shutil

    from genrec.config import config_from_json
    from genrec.stages.validate_pages import run_validate_pages

    try:
        run_validate_pages(config_from_json(config_json), sessionized.path, pages.path, pipeline_run_id or kfp_run_id)
    finally:  # the report exists unless the stage failed before validating anything
        if os.path.exists(f"{pages.path}/report.md"):
            shutil.copyfile(f"{pages.path}/report.md", report.path)
