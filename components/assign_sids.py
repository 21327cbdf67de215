from kfp import dsl


def assign_sids(config_json: str, pipeline_run_id: str, kfp_run_id: str, embeddings: dsl.Input[dsl.Dataset],
                validated: str, sids: dsl.Output[dsl.Dataset], report: dsl.Output[dsl.Markdown]):
    """RQ-KMeans semantic IDs, collision handling, prefix trie and SID report (genrec.stages.assign_sids). validated:
    validate-events' handoff (genrec.data.tables)."""
    import tempfile

    from genrec.config import config_from_json
    from genrec.data.tables import receive
    from genrec.stages.assign_sids import run_assign_sids

    run_assign_sids(config_from_json(config_json), embeddings.path, receive(validated, tempfile.mkdtemp()), sids.path,
                    pipeline_run_id or kfp_run_id)
    with open(f"{sids.path}/report.md") as src, open(report.path, "w") as dst:
        dst.write(src.read())
