from kfp import dsl


def gate_and_register(config_json: str, pipeline_run_id: str, kfp_run_id: str, evaluation: dsl.Input[dsl.Dataset],
                      model: dsl.Input[dsl.Model], sids: dsl.Input[dsl.Dataset], decision: dsl.Output[dsl.Dataset],
                      metrics: dsl.Output[dsl.Metrics], report: dsl.Output[dsl.Markdown], page: dsl.Output[dsl.HTML]):
    """The evaluation gate and the MLflow model registry (genrec.stages.gate_and_register); decides inside the
    component, so a local run and a cluster run decide the same way."""
    from genrec.config import config_from_json
    from genrec.stages.gate_and_register import run_gate_and_register

    result = run_gate_and_register(config_from_json(config_json), evaluation.path, model.path, sids.path, decision.path,
                                   pipeline_run_id or kfp_run_id)
    metrics.log_metric("gate/passed", float(result["decision"]["passed"]))
    metrics.log_metric("gate/promoted", float(result["decision"]["promote"]))
    with open(f"{decision.path}/decision.md") as src, open(report.path, "w") as dst:
        dst.write(src.read())
    with open(f"{decision.path}/decision.html") as src, open(page.path, "w") as dst:
        dst.write(src.read())
