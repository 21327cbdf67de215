"""Run the KFP pipeline on this machine with kfp.local: every task as a subprocess of this Python environment
(SubprocessRunner) or in its container image (DockerRunner).

kfp.local prints each task's whole executor input (the config JSON included) and its streamed log; all of that
goes to `<pipeline root>/kfp-local.log`, and the terminal gets one line per task as it starts and ends.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from components import Images
from genrec.config import PipelineConfig
from genrec.data import tables
from genrec.data.io import is_object_store
from genrec.errors import ConfigError
from genrec.tracking_server import is_server, tracking_uri

# What a task container gets from this process's environment: where it tracks to and as whom (kfp.local's
# DockerRunner passes no environment; on a cluster a Kubernetes Secret provides these).
CONTAINER_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 # an s3:// source (source.kind=parquet)
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")

RUNNERS = ("subprocess", "docker")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")


@dataclass
class LocalRun:
    pipeline_root: Path
    succeeded: bool
    log_path: Path
    error: str = ""
    failed_task: str = ""
    failed_tail: list[str] = field(default_factory=list)

    def metrics_table(self) -> str:
        """The evaluate stage's Markdown table ('' when it did not run)."""
        found = sorted(self.pipeline_root.glob("*/evaluate/evaluation/metrics.md"))
        return found[-1].read_text() if found else ""

    def gate_decision(self) -> dict | None:
        """gate-and-register's decision.json (None when it did not run)."""
        found = sorted(self.pipeline_root.glob("*/gate-and-register/decision/decision.json"))
        return json.loads(found[-1].read_text()) if found else None

    def data_docs(self) -> list[Path]:
        return sorted(self.pipeline_root.glob("*/*/*/gx/uncommitted/data_docs/local_site/index.html"))


class TaskProgress(io.TextIOBase):
    """A stdout for kfp.local: everything goes to the log file; task starts and ends also go to `terminal`
    (the stream that was stdout before kfp.local's output was redirected here).

    It keeps the last lines each task printed, so that a failed task's own error can be shown.
    """

    def __init__(self, log: TextIO, terminal: TextIO, tail_lines: int = 25):
        self.log, self.terminal = log, terminal
        self.task, self.started, self.ended = "", 0.0, True
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.failed_task, self.failed_tail = "", []
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def echo(self, text: str) -> None:
        print(text, file=self.terminal, flush=True)

    def _line(self, line: str) -> None:
        if m := _START.search(line):
            self.task, self.started, self.ended = m.group(1), time.time(), False
            self.tail.clear()
            self.echo(f"  {self.task:<20} started")
        elif (m := _END.search(line)) and m.group(1) == self.task:
            self.ended = True
            word = {"SUCCESS": "success", "FAILURE": "failed"}.get(m.group(2), m.group(2).lower())
            self.echo(f"  {self.task:<20} {word:<9} {time.time() - self.started:6.0f} s")
            if m.group(2) != "SUCCESS" and not self.failed_task:  # the first failure, not the exit task after it
                self.failed_task, self.failed_tail = self.task, list(self.tail)
        elif line.strip():
            self.tail.append(line.strip())

    def failed(self) -> None:
        """kfp.local raised: name the task that failed (if no end line said so, the one that was running)."""
        if not self.ended:
            self.echo(f"  {self.task:<20} {'failed':<9} {time.time() - self.started:6.0f} s")
        if not self.failed_task:
            self.failed_task, self.failed_tail = self.task, list(self.tail)


def run_local(cfg: PipelineConfig, pipeline_run_id: str, runner: str = "subprocess",
              images: Images = Images()) -> LocalRun:
    """Run the whole pipeline locally; task outputs land under <work_dir>/kfp/<pipeline_run_id>/.

    runner "docker" runs each task in `images` (built by `make image`) with host networking, so the tasks reach an
    MLflow server on this machine; it mounts the pipeline root and this run's folder of run.data_root (at the same
    paths, so the tables' references hold inside the containers), so tracking must go to a server. Callers run
    `check_runner` first (the CLI does, before it creates the MLflow parent run).
    """
    from kfp import local

    from pipelines.genrec_pipeline import build_pipeline

    root = Path(cfg.run.work_dir).resolve() / "kfp" / pipeline_run_id
    root.mkdir(parents=True, exist_ok=True)
    if runner == "docker":
        kfp_runner, patch = _docker_runner(root, tables.join(tables.data_root(cfg), pipeline_run_id))
    else:
        kfp_runner, patch = local.SubprocessRunner(use_venv=False), contextlib.nullcontext()
    local.init(runner=kfp_runner, pipeline_root=str(root), raise_on_error=True)
    log_path = root / "kfp-local.log"
    with open(log_path, "w") as log:
        progress = TaskProgress(log, sys.stdout)
        try:
            with patch, contextlib.redirect_stdout(progress), contextlib.redirect_stderr(progress):
                build_pipeline(cfg, images, on_kubernetes=False)(config_json=cfg.to_json(), pipeline_run_id=pipeline_run_id)
        except RuntimeError as exc:  # kfp.local raises RuntimeError when a task fails
            progress.failed()
            return LocalRun(root, False, log_path, _ANSI.sub("", str(exc)), progress.failed_task, progress.failed_tail)
    return LocalRun(root, True, log_path)


def check_runner(cfg: PipelineConfig, runner: str) -> None:
    """Refuse, before anything runs, a runner this config cannot work with."""
    if runner not in RUNNERS:
        raise ConfigError(f"unknown runner {runner!r}: use one of {', '.join(RUNNERS)}")
    if runner != "docker":
        return
    uri = tracking_uri(cfg)
    if not is_server(uri):
        raise ConfigError(f"--runner docker needs an MLflow server the containers can reach (the tracking store is "
                          f"{uri}): start one with proxied artifacts (mlflow/README.md: the containers see no path of "
                          "this machine) and set MLFLOW_TRACKING_URI to its http:// address")
    if getattr(cfg.source, "path", None) and not is_object_store(cfg.source.path):
        raise ConfigError(f"--runner docker mounts only the pipeline root into the containers, not source.path "
                          f"({cfg.source.path}): run this source with the subprocess runner, put its files in the image, or read them from an object store (s3://)")


def _docker_runner(root: Path, data: str):
    """kfp.local's DockerRunner for this machine: host network, the image's own user, no image pulls, and the run's
    data folder (a local run.data_root) mounted at its own path.

    The containers run as the image's UID 10001, as pods do: under the caller's UID (no passwd entry in the image)
    Spark's Hadoop login fails. The run and data folders are made writable for it, so their files belong to UID 10001.
    """
    from kfp import local

    root.chmod(0o777)
    mounts = {}
    if not is_object_store(data):
        Path(data).mkdir(parents=True, exist_ok=True)
        Path(data).chmod(0o777)
        mounts[data] = {"bind": data, "mode": "rw"}
    return local.DockerRunner(network_mode="host"), _exit_status_fix(mounts)


@contextlib.contextmanager
def _exit_status_fix(mounts: dict):
    """kfp 2.17's DockerRunner starts containers with auto_remove=True and reads the exit code after the container is
    gone, which it takes for 0: a failed task counts as SUCCESS and the pipeline runs on (kubeflow/pipelines#13332,
    unfixed in 2.17). For the run only, use a container runner that keeps the container until its status is read,
    mounts `mounts` besides the pipeline root, and fails with a clear message instead of pulling an image that is
    not here."""
    import docker
    from kfp.local import docker_task_handler

    def run_docker_container(client, image, command, volumes, **run_args) -> int:
        image = docker_task_handler.add_latest_tag_if_not_present(image)
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise RuntimeError(f"image {image} is not on this machine: build it (make image) or pass --image") from None
        environment = {**{k: os.environ[k] for k in CONTAINER_ENV if k in os.environ}, **run_args.pop("environment", {})}
        container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                          volumes={**volumes, **mounts}, environment=environment, **run_args)
        try:
            for line in container.logs(stream=True):
                print(line.decode(), end="")
            return container.wait()["StatusCode"]
        finally:
            container.remove(force=True)

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_docker_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original
