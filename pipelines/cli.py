"""The installed `genrec` command: the library's stage commands (genrec.cli) plus the pipeline commands.

`run` and `compile` need kfp and the pipeline, so they live here, above the library: genrec never imports
kfp, pipelines or components.
"""

import time
import uuid
from pathlib import Path
from typing import List, Optional

import typer

from components import DEFAULT_GPU_IMAGE, DEFAULT_IMAGE, Images
from genrec import tracking
from genrec.cli import ConfigOpt, OverridesArg, friendly, resolve_config
from genrec.data import tables
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
    typer.echo(f"tables:     {tables.join(tables.data_root(cfg), run_id)}")
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
def compile(config: Optional[Path] = ConfigOpt,
            out: Path = typer.Option(None, help="Where to write the pipeline YAML [pipelines/genrec_pipeline.yaml]."),
            image: str = typer.Option("", "--image", help="Image of every task; wins over cluster.image "
                                                          f"[{DEFAULT_IMAGE}, what make image tags]."),
            gpu_image: str = typer.Option("", "--gpu-image", help="Image of the GPU tasks; wins over cluster.gpu_image "
                                          f"[{DEFAULT_GPU_IMAGE} when cluster.gpu.count > 0, else --image]."),
            overrides: Optional[List[str]] = OverridesArg):
    """Compiles the KFP pipeline to YAML for a Kubernetes KFP installation, with the config's `cluster` section:
    per-task CPU and memory requests and limits, GPUs with node selector and tolerations, the Secrets every task
    reads MLflow's login (and the object store's keys) from, the checkpoint volume, retries with backoff. The YAML
    names Secrets, never their values. `genrec config-help` lists the cluster.* keys."""
    from pipelines.genrec_pipeline import COMPILED_PATH, compile_pipeline

    cfg = _with_images(resolve_config(config, overrides, here=False), image, gpu_image)
    images = Images.resolve(cfg.cluster)
    path = compile_pipeline(out or COMPILED_PATH, cfg, images)
    c = cfg.cluster
    typer.echo(f"compiled -> {path}")
    typer.echo(f"  images:  {images.cpu}" + (f"; {', '.join(images.gpu_tasks)}: {images.gpu}" if images.gpu else ""))
    typer.echo(f"  GPUs:    {f'{c.gpu.count} x {c.gpu.accelerator} for ' + ', '.join(c.gpu.tasks) if c.gpu.count else 'none (CPU only)'}")
    typer.echo(f"  MLflow:  URI from {f'ConfigMap {c.tracking_config_map}' if c.tracking_config_map else f'Secret {c.mlflow_secret}' if c.mlflow_secret else 'the pods environment'}"
               f", login from {f'Secret {c.mlflow_secret}' if c.mlflow_secret else 'the pods environment'}")
    if c.checkpoint_pvc:
        typer.echo(f"  checkpoints: PVC {c.checkpoint_pvc} at {cfg.run.checkpoint_root}")


@app.command()
@friendly
def submit(config: Optional[Path] = ConfigOpt,
           host: str = typer.Option("", envvar="KF_PIPELINES_ENDPOINT", help="KFP API endpoint, e.g. "
                                    "https://kubeflow.example.com/pipeline or http://localhost:8080 (a port-forward of "
                                    "ml-pipeline-ui). Empty: in-cluster, else the kube config's cluster."),
           experiment: str = typer.Option("", help="KFP experiment of the run [run.experiment]."),
           run_name: str = typer.Option("", help="Name of the run in the KFP UI [run.name + the pipeline run id]."),
           namespace: str = typer.Option("", help="Kubeflow profile namespace (multi-user installations)."),
           service_account: str = typer.Option("", help="ServiceAccount the pods run as (infra/ creates "
                                                        "genrec-pipeline) [the namespace's pipeline runner]."),
           image: str = typer.Option("", "--image", help="Image of every task; wins over cluster.image."),
           gpu_image: str = typer.Option("", "--gpu-image", help="Image of the GPU tasks; wins over cluster.gpu_image."),
           pipeline: Optional[Path] = typer.Option(None, help="Submit this compiled YAML instead of compiling one "
                                                             "(its cluster settings are those it was compiled with)."),
           out: Optional[Path] = typer.Option(None, help="Where the compiled YAML goes [a temporary file]."),
           token: str = typer.Option("", envvar="KFP_TOKEN", show_default=False,
                                     help="Bearer token for the KFP API. Prefer the environment variable KFP_TOKEN: a "
                                          "command line is visible to other users of the machine."),
           cookies: str = typer.Option("", envvar="KFP_COOKIES", show_default=False,
                                       help="Cookies for a KFP behind an auth proxy, e.g. 'authservice_session=...' "
                                            "(environment: KFP_COOKIES)."),
           sa_token_path: str = typer.Option("", help="In a pod: the projected ServiceAccount token to authenticate "
                                                      "with (multi-user Kubeflow)."),
           ssl_ca_cert: str = typer.Option("", help="CA bundle of the endpoint's certificate."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Print the request (as JSON) and send nothing."),
           wait: bool = typer.Option(False, "--wait", help="Wait for the run to end; exit 2 unless it succeeded."),
           timeout: float = typer.Option(24 * 3600, help="Longest --wait waits, in seconds."),
           overrides: Optional[List[str]] = OverridesArg):
    """Starts a pipeline run on a Kubeflow Pipelines installation: compiles the pipeline with the config's `cluster`
    section (or takes --pipeline), creates the run with the resolved config as config_json and a fresh pipeline run
    id (the MLflow parent run's key), and prints the run's id and URL. --dry-run prints the request instead."""
    import json
    import tempfile

    from pipelines import submit as sub

    cfg = _with_images(resolve_config(config, overrides, here=False), image, gpu_image)
    out = out or Path(tempfile.mkdtemp(prefix="genrec-submit-")) / "genrec_pipeline.yaml"
    request = sub.build_request(cfg, host, out, Images.resolve(cfg.cluster), pipeline, experiment,
                                run_name, namespace, service_account,
                                sub.Auth(token, cookies, sa_token_path, ssl_ca_cert))
    if dry_run:
        typer.echo(json.dumps(request.describe(), indent=2))
        typer.echo(f"dry run: nothing sent (the pipeline YAML is {request.pipeline_file})", err=True)
        return
    client = sub.make_client(request)
    run_id, url = sub.send(request, client)
    typer.echo(f"run {run_id} created in experiment {request.experiment}")
    typer.echo(f"KFP run:         {url}")
    typer.echo(f"MLflow:          the parent run tagged genrec.pipeline_run_id="
               f"{request.arguments['pipeline_run_id']} in experiment {cfg.run.experiment}")
    if wait:
        state = sub.wait(client, run_id, timeout, typer.echo, request.host)
        typer.echo(f"run {run_id}: {state}")
        if state != "SUCCEEDED":
            raise typer.Exit(2)


def _with_images(cfg, image: str, gpu_image: str):
    """--image / --gpu-image into cluster.image / gpu_image, so that the tasks see them at run time too (a TrainJob
    is started with the GPU image)."""
    if image:
        cfg.cluster.image = image
    if gpu_image:
        cfg.cluster.gpu_image = gpu_image
    return cfg


if __name__ == "__main__":
    app()
