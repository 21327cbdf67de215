"""Create a custom resource that runs a job on Kubernetes (a Spark operator SparkApplication, a Kubeflow Trainer
TrainJob), wait for it to end, and fail with its own error message when it fails.

A task that hands its work to such a job is only a watcher: it creates the object in its own namespace, polls its
status, prints each change of state, and deletes the object when it times out or is stopped, so that a cancelled
pipeline leaves no job running. The pod's ServiceAccount needs create/get/delete on the resource
(infra/base/pipeline/role.yaml).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from genrec.errors import GenrecError

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class JobFailed(GenrecError):
    """The job on Kubernetes failed, timed out or could not be created; the message says which and why."""


@dataclass(frozen=True)
class Resource:
    """A custom resource kind: its API group, version, plural and how to read its state."""

    group: str
    version: str
    plural: str
    kind: str
    state_of: Callable[[dict], tuple[str, str]]
    """(state, message) of an object: state is one of running / succeeded / failed, or the resource's own word while
    it runs (shown in the progress lines)."""


def spark_state(obj: dict) -> tuple[str, str]:
    """The Spark operator's applicationState: COMPLETED, FAILED or SUBMISSION_FAILED end it."""
    app = (obj.get("status") or {}).get("applicationState") or {}
    state, message = app.get("state") or "PENDING", app.get("errorMessage") or ""
    if state == "COMPLETED":
        return "succeeded", message
    if state in ("FAILED", "SUBMISSION_FAILED"):
        return "failed", f"{state}: {message}" if message else state
    return state, message


def trainjob_state(obj: dict) -> tuple[str, str]:
    """Kubeflow Trainer's conditions: Complete=True or Failed=True end it."""
    conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    for kind, state in (("Failed", "failed"), ("Complete", "succeeded")):
        c = conditions.get(kind)
        if c and c.get("status") == "True":
            return state, f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    running = [t for t, c in conditions.items() if c.get("status") == "True"]
    return (running[-1] if running else "Created"), ""


SPARK_APPLICATION = Resource("sparkoperator.k8s.io", "v1beta2", "sparkapplications", "SparkApplication", spark_state)
TRAIN_JOB = Resource("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", trainjob_state)


def current_namespace() -> str:
    """The namespace of the pod this runs in (the pipeline's), where its jobs go."""
    if not NAMESPACE_FILE.is_file():
        raise JobFailed(f"not in a Kubernetes pod ({NAMESPACE_FILE} is missing): a job on Kubernetes is started from "
                        f"a pipeline task on the cluster")
    return NAMESPACE_FILE.read_text().strip()


def api_client():
    """A Kubernetes API client: the pod's ServiceAccount in a cluster, else the kube config."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


def run_job(api_client, resource: Resource, namespace: str, manifest: dict, timeout_s: float, poll_s: float,
            echo: Callable[[str], None] = print, failure_detail: Callable[[dict], str] | None = None) -> dict:
    """Create `manifest`, wait until it succeeds (returns the last object) or fails (raises JobFailed with its
    message and `failure_detail(obj)`, e.g. the tail of the driver's log). Timed out, interrupted or failed to
    watch: the object is deleted before the error goes up."""
    import kubernetes

    api = kubernetes.client.CustomObjectsApi(api_client)
    name = manifest["metadata"]["name"]
    where = f"{resource.kind} {namespace}/{name}"
    try:
        api.create_namespaced_custom_object(resource.group, resource.version, namespace, resource.plural, manifest)
    except kubernetes.client.ApiException as exc:
        raise JobFailed(f"cannot create {where}: {exc.status} {exc.reason}: {_api_message(exc)}") from None
    echo(f"created {where}")
    deadline, last, done = time.time() + timeout_s, None, False
    try:
        while True:
            try:
                obj = api.get_namespaced_custom_object(resource.group, resource.version, namespace, resource.plural,
                                                       name)
            except kubernetes.client.ApiException as exc:
                raise JobFailed(f"cannot read {where}: {exc.status} {exc.reason}: {_api_message(exc)}") from None
            state, message = resource.state_of(obj)
            if state != last:
                echo(f"  {time.strftime('%H:%M:%S')} {where}: {state}{f' ({message})' if message else ''}")
                last = state
            if state == "succeeded":
                done = True
                return obj
            if state == "failed":
                done = True  # leave a failed job for `kubectl describe`; its TTL or the user removes it
                detail = failure_detail(obj) if failure_detail else ""
                raise JobFailed(f"{where} failed: {message}" + (f"\n{detail}" if detail else ""))
            if time.time() >= deadline:
                raise JobFailed(f"{where} did not end within {timeout_s:.0f} s (last state {state}); deleted it")
            time.sleep(poll_s)
    finally:
        if not done:
            _delete(api, resource, namespace, name, echo)


def pod_log_tail(api_client, namespace: str, pod: str, lines: int = 40) -> str:
    """The last lines of a pod's log, or why they cannot be read."""
    import kubernetes

    if not pod:
        return "(no pod name in the status)"
    try:
        text = kubernetes.client.CoreV1Api(api_client).read_namespaced_pod_log(pod, namespace, tail_lines=lines)
    except kubernetes.client.ApiException as exc:
        return f"(log of pod {pod} unavailable: {exc.status} {exc.reason})"
    return "\n".join(f"  | {line}" for line in text.splitlines())


def failed_pods_log_tail(api_client, namespace: str, selector: str, lines: int = 40) -> str:
    """The log tails of the failed pods (else all pods) that match a label selector, e.g. a TrainJob's."""
    import kubernetes

    try:
        pods = kubernetes.client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=selector).items
    except kubernetes.client.ApiException as exc:
        return f"(pods {selector} unavailable: {exc.status} {exc.reason})"
    failed = [p for p in pods if p.status and p.status.phase == "Failed"] or pods
    return "\n".join(f"pod {p.metadata.name}:\n{pod_log_tail(api_client, namespace, p.metadata.name, lines)}"
                     for p in failed[:2]) or f"(no pod matches {selector})"


def _delete(api, resource: Resource, namespace: str, name: str, echo) -> None:
    import kubernetes

    try:
        api.delete_namespaced_custom_object(resource.group, resource.version, namespace, resource.plural, name)
        echo(f"deleted {resource.kind} {namespace}/{name}")
    except kubernetes.client.ApiException as exc:
        if exc.status != 404:
            echo(f"warning: could not delete {resource.kind} {namespace}/{name}: {exc.status} {exc.reason}")


def _api_message(exc) -> str:
    import json

    try:
        return json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")[:300]
