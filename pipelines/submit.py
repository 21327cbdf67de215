"""`genrec submit`: start a run of the compiled pipeline on a Kubeflow Pipelines installation through kfp.Client.

The request is built first (`build_request`), so `--dry-run` shows exactly what `send` would send: the pipeline
(compiled here from the config's `cluster` section, or a YAML given), the run's parameters (the resolved config and
the pipeline run id that groups the MLflow runs), experiment, namespace, service account, and how it authenticates
(never the token or cookie itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from components import Images
from genrec.config import PipelineConfig
from genrec.data import tables
from genrec.errors import ConfigError, GenrecError

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")


class SubmitError(GenrecError):
    """The KFP API could not be reached or refused the request; the message says which and what to check."""


@contextlib.contextmanager
def _explained(host: str):
    """Turn the client's errors (connection, HTTP status) into one line that names the endpoint."""
    import kfp_server_api
    import urllib3

    where = host or "the in-cluster KFP API"
    hints = {401: "the token or cookie is missing or expired (KFP_TOKEN / KFP_COOKIES)",
             403: "this identity may not create runs there (the profile namespace: --namespace)",
             404: "no KFP API under that path (e.g. https://HOST/pipeline for a full Kubeflow)"}
    try:
        yield
    except kfp_server_api.ApiException as exc:
        raise SubmitError(f"KFP at {where} answered {exc.status} {exc.reason}"
                          f"{': ' + hints[exc.status] if exc.status in hints else ''}") from None
    except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
        raise SubmitError(f"cannot reach KFP at {where}: {type(exc).__name__}: {str(exc)[:300]} (is --host "
                          f"right, the port-forward running?)") from None


@dataclass
class Auth:
    """How the client authenticates. Values stay out of every printout."""

    token: str = ""
    """A bearer token (KFP_TOKEN), e.g. `gcloud auth print-access-token` or an OIDC id token."""
    cookies: str = ""
    """Cookies for a KFP behind an auth proxy (KFP_COOKIES), e.g. 'authservice_session=...' of Kubeflow's dex."""
    sa_token_path: str = ""
    """In a pod of a multi-user Kubeflow: the projected ServiceAccount token file (KFP's
    ServiceAccountTokenVolumeCredentials)."""
    ssl_ca_cert: str = ""
    """CA bundle of the KFP endpoint's TLS certificate."""

    def describe(self) -> str:
        parts = [name for name, value in (("bearer token", self.token), ("cookies", self.cookies)) if value]
        if self.sa_token_path:
            parts.append(f"ServiceAccount token from {self.sa_token_path}")
        if self.ssl_ca_cert:
            parts.append(f"CA {self.ssl_ca_cert}")
        return ", ".join(parts) + " (values not shown)" if parts else "none (in-cluster or kube config defaults)"


@dataclass
class SubmitRequest:
    """One run to create: everything kfp.Client.create_run_from_pipeline_package gets."""

    host: str
    pipeline_file: Path
    arguments: dict
    experiment: str
    run_name: str
    namespace: str = ""
    service_account: str = ""
    auth: Auth = field(default_factory=Auth)

    def describe(self) -> dict:
        """The request as --dry-run prints it: the parameters whole, the pipeline by file, hash and tasks."""
        text = self.pipeline_file.read_text()
        ir, *platform = yaml.safe_load_all(text)
        executors = ir["deploymentSpec"]["executors"]
        kube = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
        tasks = {}
        for name, spec in sorted(executors.items()):
            c, k = spec["container"], kube.get(name, {})
            res = c.get("resources", {})
            tasks[name.removeprefix("exec-")] = {
                "image": c["image"],
                "cpu": f"{res.get('resourceCpuRequest', '-')}/{res.get('resourceCpuLimit', '-')}",
                "memory": f"{res.get('resourceMemoryRequest', '-')}/{res.get('resourceMemoryLimit', '-')}",
                **({"gpu": f"{res['accelerator'].get('resourceCount')} x {res['accelerator'].get('resourceType')}"}
                   if "accelerator" in res else {}),
                "secrets": sorted(s["secretName"] for s in k.get("secretAsEnv", [])),
                **({"volumes": [f"{p.get('constant')} at {p['mountPath']}" for p in k["pvcMount"]]}
                   if k.get("pvcMount") else {}),
            }
        return {"host": self.host or "(in-cluster / kube config)", "experiment": self.experiment,
                "run_name": self.run_name, "namespace": self.namespace or "(the client's default)",
                "service_account": self.service_account or "(the namespace's pipeline runner)",
                "auth": self.auth.describe(),
                "pipeline": {"file": str(self.pipeline_file), "sha256": hashlib.sha256(text.encode()).hexdigest(),
                             "name": ir["pipelineInfo"]["name"], "tasks": tasks},
                "arguments": {"config_json": json.loads(self.arguments["config_json"]),
                              "pipeline_run_id": self.arguments["pipeline_run_id"]}}


DATA_ROOT_ON_A_CLUSTER = tables.NO_SHARED_DATA_ROOT


def build_request(cfg: PipelineConfig, host: str, out: Path, images: Optional[Images] = None,
                  pipeline_file: Optional[Path] = None, experiment: str = "", run_name: str = "", namespace: str = "",
                  service_account: str = "", auth: Optional[Auth] = None, pipeline_run_id: str = "") -> SubmitRequest:
    """Compile the pipeline for cfg.cluster to `out` (or take `pipeline_file`, compiled before) and put together the
    run: the resolved config as config_json and a fresh pipeline run id."""
    from pipelines.genrec_pipeline import compile_pipeline

    if not cfg.run.data_root:
        raise ConfigError(DATA_ROOT_ON_A_CLUSTER)
    if pipeline_file is None:
        pipeline_file = compile_pipeline(out, cfg, images)
    elif not Path(pipeline_file).is_file():
        raise ConfigError(f"--pipeline {pipeline_file}: no such file")
    run_id = pipeline_run_id or uuid.uuid4().hex
    return SubmitRequest(host=host, pipeline_file=Path(pipeline_file),
                         arguments={"config_json": cfg.to_json(), "pipeline_run_id": run_id},
                         experiment=experiment or cfg.run.experiment, run_name=run_name or f"{cfg.run.name} {run_id[:8]}",
                         namespace=namespace, service_account=service_account, auth=auth or Auth())


def make_client(request: SubmitRequest):
    """A kfp.Client for the request's host and authentication."""
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    a = request.auth
    credentials = ServiceAccountTokenVolumeCredentials(a.sa_token_path) if a.sa_token_path else None
    # The client prints its own links (send() prints ours) and warns about KFP versions before 2.0 beta.
    with _explained(request.host), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=request.host or None, namespace=request.namespace or "kubeflow",
                          existing_token=a.token or None, cookies=a.cookies or None, credentials=credentials,
                          ssl_ca_cert=a.ssl_ca_cert or None)


def send(request: SubmitRequest, client) -> tuple[str, str]:
    """Create the run; returns its id and the URL of its page in the KFP UI."""
    with _explained(request.host), contextlib.redirect_stdout(io.StringIO()):
        result = client.create_run_from_pipeline_package(
            str(request.pipeline_file), arguments=request.arguments, run_name=request.run_name,
            experiment_name=request.experiment, namespace=request.namespace or None,
            service_account=request.service_account or None)
    return result.run_id, f"{client._get_url_prefix()}/#/runs/details/{result.run_id}"


def wait(client, run_id: str, timeout_s: float, echo: Callable[[str], None], host: str = "", poll_s: float = 30) -> str:
    """Poll the run until it ends (or timeout_s passes), echoing each change of state; returns the last state."""
    deadline, last = time.time() + timeout_s, None
    while True:
        with _explained(host):
            state = str(client.get_run(run_id).state or "UNKNOWN")
        if state != last:
            echo(f"  {time.strftime('%H:%M:%S')} {state}")
            last = state
        if state in TERMINAL_STATES or time.time() >= deadline:
            return state
        time.sleep(poll_s)
