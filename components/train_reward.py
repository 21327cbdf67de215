from kfp import dsl


def train_reward(config_json: str, pipeline_run_id: str, kfp_run_id: str, pages: dsl.Input[dsl.Dataset],
                 sids: dsl.Input[dsl.Dataset], raw: dsl.Input[dsl.Dataset], reward: dsl.Output[dsl.Model],
                 metrics: dsl.Output[dsl.Metrics], report: dsl.Output[dsl.Markdown]):
    """The SIM-style reward model on the pages' exposures; AUC, log loss, calibration (genrec.stages.train_reward)."""
    from genrec.config import config_from_json
    from genrec.stages.train_reward import run_train_reward

    result = run_train_reward(config_from_json(config_json), pages.path, sids.path, reward.path,
                              pipeline_run_id or kfp_run_id, raw.path)
    for name, value in result["test"].items():
        metrics.log_metric(f"reward/{name}", value)
    with open(f"{reward.path}/report.md") as src, open(report.path, "w") as dst:
        dst.write(src.read())
