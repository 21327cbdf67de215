"""MLflow tracking: the only module of genrec that talks to MLflow.

One parent run per pipeline run (found or created by the tag `genrec.pipeline_run_id`, so that
components running in separate processes or pods land under the same parent), and one child run
per stage. Every run carries the tags pipeline run id, git commit and config hash, and records the
fully resolved config as `config.yaml`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from genrec import stage_outputs
from genrec.config import PipelineConfig
from genrec.credentials import redact
from genrec.memory import PeakMemory
from genrec.tracking_server import TrackingError, check_server, explain, is_server, tracking_uri

__all__ = ["TrackingError", "check_server", "is_server", "tracking_uri", "ensure_parent_run", "finish_parent_run", "stage_run"]

PIPELINE_TAG = "genrec.pipeline_run_id"
STAGE_TAG = "genrec.stage"


def git_commit() -> str:
    """The commit of the code that runs: $GENREC_GIT_COMMIT (set in images), else git, else 'unknown'."""
    if os.environ.get("GENREC_GIT_COMMIT"):
        return os.environ["GENREC_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _mlflow():
    warnings.filterwarnings("ignore", module="mlflow")
    import mlflow

    return mlflow


@contextmanager
def _env_restored(*keys: str) -> Iterator[None]:
    """These environment variables as they were before the block, whatever it set."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _point_mlflow_at(mlflow, uri: str) -> None:
    """mlflow.set_tracking_uri, without its side effect: it also exports MLFLOW_TRACKING_URI into this process's
    environment, where genrec reads the user's choice, so a sqlite default (or any later URI) would stick for every
    later config in the process and its subprocesses."""
    with _env_restored("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(uri)


def _experiment_id(mlflow, cfg: PipelineConfig) -> str:
    exp = mlflow.get_experiment_by_name(cfg.run.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri(cfg).startswith("sqlite:"):
        # Keep artifacts beside the sqlite store, not in ./mlruns of whatever the current directory is.
        location = (Path(cfg.run.work_dir).resolve() / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(cfg.run.experiment, artifact_location=location)
    except Exception:
        exp = mlflow.get_experiment_by_name(cfg.run.experiment)
        if exp is None:  # not a concurrent create by another stage process: a real failure
            raise
        return exp.experiment_id


@contextmanager
def _few_retries() -> Iterator[None]:
    """MLflow's client retries a failed request 7 times with backoff (minutes); around the first calls of a process and
    around the record of a failure, retry once, so that a server that cannot be used fails the stage in seconds.
    A user's own MLFLOW_HTTP_REQUEST_* settings win."""
    with _env_restored(*_FEW_RETRIES):
        for key, value in _FEW_RETRIES.items():
            os.environ.setdefault(key, value)
        yield


_FEW_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# For the whole of a stage: a server that has gone away fails the stage in seconds (not after MLflow's 7 retries
# with backoff, about 4 minutes); KFP's task retry, and the stages' resume, handle what a longer outage needs.
_STAGE_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


@contextmanager
def _stage_retries() -> Iterator[None]:
    """Few, short retries for every call of a stage; a user's own MLFLOW_HTTP_REQUEST_* settings win."""
    with _env_restored(*_STAGE_RETRIES):
        for key, value in _STAGE_RETRIES.items():
            os.environ.setdefault(key, value)
        yield


@contextmanager
def _startup(cfg: PipelineConfig) -> Iterator[None]:
    """The first calls of a process to the server: few retries, and errors that say what to do."""
    from mlflow.exceptions import MlflowException

    with _few_retries():
        try:
            yield
        except MlflowException as exc:
            raise explain(exc, cfg) from None


def _tags(cfg: PipelineConfig, pipeline_run_id: str) -> dict[str, str]:
    return {PIPELINE_TAG: pipeline_run_id, "genrec.git_commit": git_commit(), "genrec.config_hash": cfg.config_hash()}


def ensure_parent_run(cfg: PipelineConfig, pipeline_run_id: str) -> str:
    """Find or create the parent run of a pipeline run; returns its MLflow run id."""
    check_server(cfg)
    mlflow = _mlflow()
    with _startup(cfg):
        _point_mlflow_at(mlflow, tracking_uri(cfg))
        exp_id = _experiment_id(mlflow, cfg)
        client = mlflow.MlflowClient()
        found = client.search_runs([exp_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}' and "
                                                           f"tags.`{STAGE_TAG}` = 'pipeline'", max_results=1)
        if found:
            return found[0].info.run_id
        run = client.create_run(exp_id, run_name=f"{cfg.run.name}-{pipeline_run_id[:8]}",
                                tags={**_tags(cfg, pipeline_run_id), STAGE_TAG: "pipeline"})
        client.log_text(run.info.run_id, cfg.to_yaml(), "config.yaml")
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in _flatten(cfg.model_dump(mode="json")).items()]
        client.log_batch(run.info.run_id, params=params)
    return run.info.run_id


def finish_parent_run(cfg: PipelineConfig, pipeline_run_id: str, status: str = "FINISHED",
                      summary: dict[str, Any] | None = None) -> str:
    """Close the parent run with a status (FINISHED, FAILED or KILLED) and optional summary metrics; returns its run id.
    The pipeline's final task calls it (on a cluster nothing else would), and `genrec run` too."""
    mlflow = _mlflow()
    run_id = ensure_parent_run(cfg, pipeline_run_id)
    with _startup(cfg):
        client = mlflow.MlflowClient()
        for key, value in (summary or {}).items():
            client.log_metric(run_id, key, float(value))
        client.set_terminated(run_id, status=status)
    return run_id


def run_url(cfg: PipelineConfig, run_id: str) -> str:
    """Where to look at a run: a UI link for an http store, else the store and the run id."""
    uri = tracking_uri(cfg)
    mlflow = _mlflow()
    _point_mlflow_at(mlflow, uri)
    exp = mlflow.get_experiment_by_name(cfg.run.experiment)
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/experiments/{exp.experiment_id}/runs/{run_id}"
    return f"run {run_id} in {uri} (see it with `genrec ui`)"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        key = str(key).replace("@", "_at_")  # MLflow names may not hold "@" (gate keys like genrec/hr@10)
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class StageTracker:
    """What a stage may log to its child run. Thin on purpose: names stay stable across runs."""

    def __init__(self, mlflow, run_id: str):
        self._mlflow = mlflow
        self.run_id = run_id

    def params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params({k: v for k, v in _flatten(params).items()})

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path)

    def json(self, obj: Any, name: str) -> None:
        self._mlflow.log_dict(json.loads(json.dumps(obj, default=str)), name)

    def figure(self, fig, name: str) -> None:
        self._mlflow.log_figure(fig, name)

    def tag(self, key: str, value: str) -> None:
        self._mlflow.set_tag(key, value)

    def dataset(self, path: str | Path, name: str, context: str, schema_columns: dict[str, str] | None = None,
                digest: str | None = None) -> None:
        """Record a dataset this stage read (context='input') or wrote (context='output')."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.types import ColSpec, Schema

        schema = None
        if schema_columns:
            kinds = {"int64": "long", "int32": "integer", "double": "double", "float64": "double", "bool": "boolean"}
            schema = Schema([ColSpec(kinds.get(t, "string"), n) for n, t in schema_columns.items()])
        # A stage writes into its work folder; the dataset is read later from the output folder it becomes.
        where = str(path) if "://" in str(path) else str(stage_outputs.final_path(Path(path).resolve()))
        source = resolve_dataset_source(where)
        ds = MetaDataset(source=source, name=name, digest=digest, schema=schema)
        self._mlflow.log_input(ds, context=context)

    def table(self, ref, name: str, context: str) -> None:
        """Record a table by its reference (genrec.data.tables.TableRef): its URI, schema and content hash."""
        self.dataset(ref.uri, name, context, ref.schema, ref.content_hash[:16])


@contextmanager
def stage_run(cfg: PipelineConfig, stage: str, pipeline_run_id: str) -> Iterator[StageTracker]:
    """A child run for one stage under the pipeline's parent run. Logs the config and the stage's duration;
    the run ends FAILED (with the error text as an artifact) when the stage raises.

    A server that cannot be used fails here, before the stage does any work, with one line that says what to do.
    """
    with _stage_retries():
        with _stage_run(cfg, stage, pipeline_run_id) as tracker:
            yield tracker


@contextmanager
def _stage_run(cfg: PipelineConfig, stage: str, pipeline_run_id: str) -> Iterator[StageTracker]:
    mlflow = _mlflow()
    parent_id = ensure_parent_run(cfg, pipeline_run_id)
    with _startup(cfg):
        exp_id = _experiment_id(mlflow, cfg)
        run = mlflow.start_run(experiment_id=exp_id, run_name=stage, parent_run_id=parent_id,
                               tags={**_tags(cfg, pipeline_run_id), STAGE_TAG: stage})
        try:
            mlflow.log_text(cfg.to_yaml(), "config.yaml")
        except BaseException:
            _end_failed(mlflow)
            raise
    t0 = time.time()
    memory = PeakMemory().start()  # this process and what it starts (Spark's JVM): what a pod's limit counts
    try:
        yield StageTracker(mlflow, run.info.run_id)
    except BaseException as exc:
        memory.stop()
        _end_failed(mlflow, f"{type(exc).__name__}: {redact(str(exc))}", time.time() - t0)
        raise explain(exc, cfg) if isinstance(exc, Exception) else exc
    try:
        mlflow.log_metrics({"duration_s": time.time() - t0, "peak_rss_mib": memory.stop() / 2**20})
        mlflow.end_run()
    except Exception as exc:
        _end_failed(mlflow)
        raise explain(exc, cfg) from None


def _end_failed(mlflow, error: str = "", duration_s: float | None = None) -> None:
    """End the active run FAILED, recording the error where the server still answers. Best effort: the stage's own
    error is what the caller raises, not a second one from a server that has gone away."""
    with _few_retries():
        try:
            if error:
                mlflow.log_text(error, "error.txt")
            if duration_s is not None:
                mlflow.log_metric("duration_s", duration_s)
        except Exception:
            pass
        try:
            mlflow.end_run(status="FAILED")
        except Exception:
            pass


class _NoTracker(StageTracker):
    """For processes other than rank 0 of a multi-process training run: they train but do not log."""

    def __init__(self):
        super().__init__(None, "")

    def params(self, params):
        pass

    def metrics(self, metrics, step=None):
        pass

    def artifact(self, path, artifact_path=None):
        pass

    def json(self, obj, name):
        pass

    def figure(self, fig, name):
        pass

    def tag(self, key, value):
        pass

    def dataset(self, path, name, context, schema_columns=None, digest=None):
        pass


@contextmanager
def no_run() -> Iterator[StageTracker]:
    """A tracker that logs nothing: ranks > 0 of a distributed stage (rank 0 logs for all)."""
    yield _NoTracker()

