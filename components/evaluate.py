from kfp import dsl


def evaluate(config_json: str, pipeline_run_id: str, kfp_run_id: str, model: dsl.Input[dsl.Model],
             sft: dsl.Input[dsl.Model], reward: dsl.Input[dsl.Model], raw: str, pages: str,
             sids: dsl.Input[dsl.Dataset], evaluation: dsl.Output[dsl.Dataset], metrics: dsl.Output[dsl.Metrics],
             report: dsl.Output[dsl.Markdown]):
    """HR@K, NDCG@K, Recall@K, HaR and R@K of the aligned and SFT models beside the baselines (genrec.stages.evaluate).
    raw, pages: the data stages' handoffs (genrec.data.tables)."""
    import tempfile

    from genrec.config import config_from_json
    from genrec.data.tables import receive
    from genrec.stages.evaluate import run_evaluate

    rows = run_evaluate(config_from_json(config_json), model.path, receive(pages, tempfile.mkdtemp()), sids.path,
                        evaluation.path, pipeline_run_id or kfp_run_id, sft_dir=sft.path, reward_dir=reward.path,
                        raw_dir=receive(raw, tempfile.mkdtemp()))
    for method, values in rows.items():
        for name, value in values.items():
            metrics.log_metric(f"{method}/{name}", value)
    with open(f"{evaluation.path}/metrics.md") as src, open(report.path, "w") as dst:
        dst.write(src.read())
