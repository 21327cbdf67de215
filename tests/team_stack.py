"""The team's tracking server as tests reach it (mlflow/local_stack.py: PostgreSQL, moto's S3, `mlflow server` with
logins, all on 127.0.0.1), and one tiny pipeline run against it that test_docker and test_tracking_server both read.

The run is the expensive part (5-9 minutes here), so the session makes it once: in the task containers (kfp.local's
DockerRunner, the server from its image) where a Docker daemon can run, else as subprocesses of this Python with the
server from this environment. test_docker's tests need the first and skip, saying why, without a daemon;
test_tracking_server's hold for both.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "mlflow"))
import local_stack  # noqa: E402  (mlflow/local_stack.py: the script a team runs)

MODEL = "genrec-team"
EXPERIMENT = "tiny-on-team-server"
TASKS = ["ingest", "validate-events", "sessionize", "validate-pages", "embed-items", "assign-sids", "train-sft",
         "train-reward", "align", "evaluate", "gate-and-register"]


@dataclass
class TeamStack:
    """A running stack and the throwaway secrets it was started with (kept out of this process's environment)."""

    stack: local_stack.Stack
    secrets: dict[str, str]
    server_image: str  # "" when the server runs from this Python environment

    @property
    def uri(self) -> str:
        return self.stack.uri

    def server_env(self):
        """This process's environment with the server's own secrets, for the calls that act as its operator."""
        return local_stack.environment(self.secrets)


@dataclass
class TeamRun:
    """The tiny pipeline's `genrec run` against the team's stack."""

    proc: subprocess.CompletedProcess
    work: Path
    seconds: float
    image_commit: str  # the task image's GENREC_GIT_COMMIT; "" when the tasks ran as subprocesses

    @property
    def in_containers(self) -> bool:
        return bool(self.image_commit)


def client_env(stack: TeamStack, **changes: str | None) -> dict[str, str]:
    """A client's environment: the server's URI and the pipeline user's login; none of the server's own secrets."""
    out = {k: v for k, v in os.environ.items() if k not in stack.secrets and not k.startswith("MLFLOW_")}
    out.update(MLFLOW_TRACKING_URI=stack.uri, MLFLOW_TRACKING_USERNAME=stack.secrets["MLFLOW_TRACKING_USERNAME"],
               MLFLOW_TRACKING_PASSWORD=stack.secrets["MLFLOW_TRACKING_PASSWORD"])
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


@contextlib.contextmanager
def logged_in(env: dict[str, str]):
    """This process's MLflow client as the user in env (pass the URI to the client too: another test may have called
    mlflow.set_tracking_uri, which wins over the environment)."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    with local_stack.environment({k: env[k] for k in keys}):
        yield


def genrec(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The `genrec` CLI in a subprocess with exactly `env`."""
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
