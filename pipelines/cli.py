"""The installed `genrec` command: the library's stage commands (genrec.cli) plus the pipeline commands.

`run` and `compile` need kfp and the pipeline, so they live here, above the library: genrec never imports
kfp, pipelines or components.
"""

import time
import uuid
from pathlib import Path
from typing import List, Optional

import typer

from components import DEFAULT_GPU_IMAGE, DEFAULT_IMAGE, DEFAULT_MLFLOW_SECRET, Images
from genrec import tracking
from genrec.cli import ConfigOpt, OverridesArg, friendly, resolve_config
from genrec.cli import app as stage_app

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help=stage_app.info.help)
app.registered_commands.extend(stage_app.registered_commands)

ImageOpt = typer.Option(DEFAULT_IMAGE, "--image", help="Image of every task (make image builds it).")
GpuImageOpt = typer.Option("", "--gpu-image", help=f"Image of the training tasks, train-sft and align (make image-gpu "
                                                    f"builds {DEFAULT_GPU_IMAGE}). Default: --image.")


@app.command()
@friendly
def run(config: Optional[Path] = ConfigOpt,
        runner: str = typer.Option("subprocess", help="subprocess: every task in this Python environment. docker: every "
                                                      "task in its image (--image), tracking to an MLflow server."),
        image: str = ImageOpt, gpu_image: str = GpuImageOpt, overrides: Optional[List[str]] = OverridesArg):
    """Runs the whole KFP pipeline on this machine (kfp.local) under one MLflow parent run: one line per task as it
    starts and ends, then the metrics table and where the outputs, the MLflow run, the Data Docs and the full log
    are. Exit 2 if a stage fails."""
    from pipelines.local_run import check_runner, run_local

    cfg = resolve_config(config, overrides)
    check_runner(cfg, runner)
    run_id = uuid.uuid4().hex
    parent = tracking.ensure_parent_run(cfg, run_id)
    typer.echo(f"pipeline run {run_id}: MLflow parent run {parent} ({tracking.tracking_uri(cfg)})")
    if runner == "docker":
        typer.echo(f"images: {image}" + (f", training tasks {gpu_image}" if gpu_image else ""))
    t0 = time.time()
    try:
        result = run_local(cfg, run_id, runner, Images(image, gpu_image))
    except BaseException:
        _close_parent(cfg, run_id, "KILLED", time.time() - t0)
        raise
    elapsed = time.time() - t0
    # The pipeline's exit task (finish-run) has ended the parent run already; this covers a run that stopped before it
    # and adds the duration.
    _close_parent(cfg, run_id, "FINISHED" if result.succeeded else "FAILED", elapsed)
    typer.echo("")
    typer.echo(f"pipeline {'succeeded' if result.succeeded else 'FAILED'} in {elapsed:.0f} s")
    typer.echo(f"outputs:    {result.pipeline_root}")
    table = result.metrics_table()
    if table:
        typer.echo("")
        typer.echo(table)
    gate = result.gate_decision()
    if gate:
        d = gate["decision"]
        typer.echo(f"gate:       {'PASS' if d['passed'] else 'FAIL'}: {d['reason']}")
        if gate["version"]:
            typer.echo(f"registered: models:/{gate['model_name']}/{gate['version']} "
                       f"({'new version' if gate['new_version'] else 'same content as before: no new version'}); "
                       f"champion: {gate['champion_version'] or 'none'}")
    typer.echo(f"MLflow run: {tracking.run_url(cfg, parent)}")
    for docs in result.data_docs():
        typer.echo(f"Data Docs:  {docs}")
    typer.echo(f"full log:   {result.log_path}")
    if not result.succeeded:
        typer.echo(f"\ntask {result.failed_task or '?'} failed; the last lines of its log:", err=True)
        for line in result.failed_tail:
            typer.echo(f"  | {line}", err=True)
        typer.echo(f"error: {result.error}", err=True)
        raise typer.Exit(2)


def _close_parent(cfg, run_id: str, status: str, elapsed: float) -> None:
    """End the parent run; a tracking failure here is reported, and does not hide how the pipeline went."""
    try:
        tracking.finish_parent_run(cfg, run_id, status, {"pipeline_duration_s": elapsed})
    except Exception as exc:
        typer.echo(f"warning: could not end the MLflow parent run: {exc}", err=True)


@app.command()
@friendly
def compile(out: Path = typer.Option(None, help="Where to write the pipeline YAML [pipelines/genrec_pipeline.yaml]."),
            image: str = ImageOpt, gpu_image: str = GpuImageOpt,
            mlflow_secret: str = typer.Option(DEFAULT_MLFLOW_SECRET, help="Kubernetes Secret, in the namespace the "
                                              "pipeline runs in, whose keys MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME "
                                              "and MLFLOW_TRACKING_PASSWORD every task gets as environment variables "
                                              "(mlflow/README.md). Empty: none (the pods get them some other way).")):
    """Compiles the KFP pipeline to YAML for a Kubernetes KFP installation; every task names --image (the training
    tasks --gpu-image when given) and reads the tracking server and its login from --mlflow-secret. The YAML holds no
    tracking URI and no credential."""
    from pipelines.genrec_pipeline import COMPILED_PATH, compile_pipeline

    path = compile_pipeline(out or COMPILED_PATH, Images(image, gpu_image), mlflow_secret)
    typer.echo(f"compiled -> {path} (image {image}{f', training tasks {gpu_image}' if gpu_image else ''}; "
               f"MLflow from {f'Secret {mlflow_secret}' if mlflow_secret else 'the pods environment'})")


if __name__ == "__main__":
    app()
