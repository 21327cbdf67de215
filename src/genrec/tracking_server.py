"""Where a process's runs go (the tracking URI, from the environment) and what can go wrong with a server there.

MLflow's client retries a failing request for minutes and then raises an error that names an endpoint. A user needs
to know in seconds which of four things is wrong and what to do: the server is not reachable, it refuses the login,
the user may not write to the experiment, or the server cannot reach its artifact store. `check_server` asks once
before a stage starts; `explain` turns an MlflowException raised later into the same messages.
"""

from __future__ import annotations

import os
from pathlib import Path

from genrec.config import PipelineConfig
from genrec.credentials import TrackingLogin, has_password, redact
from genrec.errors import GenrecError


class TrackingError(GenrecError):
    """The tracking server cannot be used; the message names it and says what to do."""


def tracking_uri(cfg: PipelineConfig) -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store in the work folder. Never from the config: see genrec.credentials."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        if has_password(uri):
            raise TrackingError(f"MLFLOW_TRACKING_URI ({redact(uri)}) carries a password: it would be printed and logged; "
                                "put the user name in MLFLOW_TRACKING_USERNAME and the password in MLFLOW_TRACKING_PASSWORD")
        return uri
    db = Path(cfg.run.work_dir).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(cfg: PipelineConfig, timeout_s: float = 10.0) -> None:
    """Fail in seconds, with one line that names the server and what to do, when the tracking server cannot be used:
    unreachable, a login it refuses, no permission on the experiment, or an artifact store it cannot reach.

    MLflow's own client retries for minutes before it gives up; this asks once. Nothing for a local store.
    """
    import requests

    uri = tracking_uri(cfg)
    if not is_server(uri):
        return
    login = TrackingLogin.from_env()
    base = uri.rstrip("/")

    def get(endpoint: str, **params) -> "requests.Response":
        try:
            return requests.get(f"{base}{endpoint}", params=params, auth=login.auth(), timeout=timeout_s)
        except requests.RequestException as exc:
            raise TrackingError(f"cannot reach the MLflow server at {uri} ({type(exc).__name__}): start it "
                                "(mlflow/README.md) or set MLFLOW_TRACKING_URI to one that runs") from None

    resp = get("/api/2.0/mlflow/experiments/get-by-name", experiment_name=cfg.run.experiment)
    if resp.status_code == 401:
        raise TrackingError(_login_refused(uri, login))
    if resp.status_code == 403:
        raise TrackingError(_no_permission(uri, login, cfg.run.experiment))
    if resp.status_code == 404:
        return  # no such experiment yet: the first stage creates it
    if resp.status_code != 200:
        raise TrackingError(f"the MLflow server at {uri} answered HTTP {resp.status_code} ({_body(resp)}): see its log")
    location = resp.json()["experiment"].get("artifact_location", "")
    if location.startswith("mlflow-artifacts:"):
        # Proxied artifacts: listing the experiment's folder makes the server call its object store.
        path = location.split("mlflow-artifacts:", 1)[1].lstrip("/")
        path = path.split("/", 1)[1] if "://" in location else path  # mlflow-artifacts://host/path
        resp = get("/api/2.0/mlflow-artifacts/artifacts", path=path)
        if resp.status_code == 403:
            raise TrackingError(_no_permission(uri, login, cfg.run.experiment))
        if resp.status_code != 200:
            raise TrackingError(_store_unreachable(uri, f"listing artifacts answers HTTP {resp.status_code}"))


def _body(resp) -> str:
    text = " ".join(resp.text.split())
    return text[:200] + ("..." if len(text) > 200 else "")


def _login_refused(uri: str, login: TrackingLogin) -> str:
    if not login.username:
        return (f"the MLflow server at {uri} requires a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "(an admin creates users: mlflow/README.md)")
    return (f"the MLflow server at {uri} refused the login of user {login.username!r} (wrong password, or no such user): "
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")


def _no_permission(uri: str, login: TrackingLogin, experiment: str) -> str:
    return (f"user {login.username!r} has no permission to write to experiment {experiment!r} on the MLflow server at "
            f"{uri}: ask an MLflow admin to grant EDIT on it (mlflow/README.md), or set run.experiment to one of yours")


def _store_unreachable(uri: str, detail: str) -> str:
    return (f"the MLflow server at {uri} cannot reach its artifact store ({detail}): check the server's object store "
            "(its endpoint, bucket and credentials; mlflow/README.md)")


def explain(exc: Exception, cfg: PipelineConfig) -> Exception:
    """A tracking failure as a TrackingError that says what to do (the exception itself when there is nothing to add)."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(cfg)
    if not is_server(uri) or not isinstance(exc, MlflowException):
        return exc
    login = TrackingLogin.from_env()
    status = exc.get_http_status_code()
    text = redact(str(exc))
    if status == 401 or exc.error_code == "UNAUTHENTICATED":
        return TrackingError(_login_refused(uri, login))
    if status == 403 or exc.error_code == "PERMISSION_DENIED":
        return TrackingError(_no_permission(uri, login, cfg.run.experiment))
    if any(m in text for m in ("NewConnectionError", "Connection refused", "ConnectionError", "ConnectTimeout")):
        return TrackingError(f"lost the MLflow server at {uri} (it no longer answers): check that it runs, then rerun")
    if "/mlflow-artifacts/" in text and (status >= 500 or "error responses" in text):
        # The server answers, but not for artifacts: its object store is what fails.
        return TrackingError(_store_unreachable(uri, "artifact uploads answer HTTP 5xx"))
    return exc
