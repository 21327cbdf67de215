"""A stand-in for the Kubernetes API server on 127.0.0.1 (the custom-object and pod-log endpoints the real
`kubernetes` client calls), and a strict check of a manifest against an operator's generated API models.

The stand-in plays the operator through hooks: `on_create(obj)` runs when an object is created (e.g. runs the
TrainJob's command on this machine) and `status_of(obj)` gives the status the next GET returns."""

from __future__ import annotations

import json
import re
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from urllib.parse import parse_qs, urlparse

from pydantic import BaseModel

OBJECT = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                    r"(?:/(?P<name>[^/?]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log$")


class StandIn:
    def __init__(self, on_create=None, status_of=None, pod_logs=None, refuse_create: int = 0):
        """pod_logs: pod name -> (labels, phase, log text); on_create may add to it."""
        self.objects: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.deleted: list[str] = []
        self.on_create = on_create or (lambda obj: None)
        self.status_of = status_of or (lambda obj: {})
        self.pod_logs = pod_logs if pod_logs is not None else {}
        self.refuse_create = refuse_create
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body):
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                path = self.path.split("?")[0]
                standin.calls.append(("POST", path))
                obj = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if standin.refuse_create:
                    return self._reply(standin.refuse_create, {"kind": "Status", "message": "trainjobs is forbidden: "
                                                               "User cannot create resource"})
                obj.setdefault("metadata", {})["namespace"] = OBJECT.match(path)["ns"]
                standin.objects[obj["metadata"]["name"]] = obj
                threading.Thread(target=standin.on_create, args=(obj,), daemon=True).start()
                self._reply(201, obj)

            def do_GET(self):
                path = self.path.split("?")[0]
                standin.calls.append(("GET", path))
                if m := POD_LOG.match(path):
                    return self._reply(200, standin.pod_logs[m["pod"]][2]) if m["pod"] in standin.pod_logs \
                        else self._reply(404, {"message": "pod not found"})
                if PODS.match(path):
                    key, _, value = parse_qs(urlparse(self.path).query).get("labelSelector", [""])[0].partition("=")
                    items = [{"metadata": {"name": n, "labels": labels}, "status": {"phase": phase}}
                             for n, (labels, phase, _) in standin.pod_logs.items() if labels.get(key) == value]
                    return self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
                m = OBJECT.match(path)
                obj = standin.objects.get(m["name"]) if m else None
                if obj is None:
                    return self._reply(404, {"kind": "Status", "message": "not found"})
                self._reply(200, {**obj, "status": standin.status_of(obj)})

            def do_DELETE(self):
                path = self.path.split("?")[0]
                standin.calls.append(("DELETE", path))
                name = OBJECT.match(path)["name"]
                standin.deleted.append(name)
                standin.objects.pop(name, None)
                self._reply(200, {"kind": "Status", "status": "Success"})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self):
        import kubernetes

        conf = kubernetes.client.Configuration()
        conf.host = f"http://127.0.0.1:{self.server.server_port}"
        return kubernetes.client.ApiClient(conf)

    def stop(self):
        self.server.shutdown()


def strict_errors(model: type[BaseModel], data, where: str = "") -> list[str]:
    """Every key of `data` that the model does not know (a typo the API server would drop or refuse), then the
    model's own type check. Empty: the manifest matches the operator's API."""
    errors = []
    if isinstance(data, dict):
        fields = {(f.alias or name): f for name, f in model.model_fields.items()}
        for key, value in data.items():
            if key not in fields:
                errors.append(f"{where}.{key}: unknown field of {model.__name__}")
                continue
            inner = _model_in(fields[key].annotation)
            if inner is not None:
                items = value if isinstance(value, list) else value.values() if isinstance(value, dict) and \
                    _is_map(fields[key].annotation) else [value]
                for item in items:
                    errors += strict_errors(inner, item, f"{where}.{key}")
    if not where:
        try:
            model.from_dict(data)
        except Exception as exc:  # pydantic's ValidationError, with every bad field listed
            errors.append(str(exc))
    return errors


def _model_in(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _is_map(annotation) -> bool:
    if typing.get_origin(annotation) is dict:
        return True
    return any(_is_map(a) for a in typing.get_args(annotation))
