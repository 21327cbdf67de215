from kfp import dsl


def train_reward(config_json: str, pipeline_run_id: str, kfp_run_id: str, pages: str, sids: dsl.Input[dsl.Dataset],
                 raw: str, reward: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics],
                 report: dsl.Output[dsl.Markdown]):
    """The SIM-style reward model on the pages' exposures; AUC, log loss, calibration (genrec.stages.train_reward).
    pages, raw: the data stages' handoffs (genrec.data.tables)."""
    import tempfile

    from genrec.config import config_from_json
    from genrec.data.tables import receive
    from genrec.stages.train_reward import run_train_reward

    result = run_train_reward(config_from_json(config_json), receive(pages, tempfile.mkdtemp()), sids.path,
                              reward.path, pipeline_run_id or kfp_run_id, receive(raw, tempfile.mkdtemp()))
    for name, value in result["test"].items():
        metrics.log_metric(f"reward/{name}", value)
    with open(f"{reward.path}/report.md") as src, open(report.path, "w") as dst:
        dst.write(src.read())
