"""The whole pipeline in its containers (make e2e-docker; tests/test_docker.py runs it on the tiny config).

1. Starts an MLflow server on 127.0.0.1 with proxied artifact serving: the containers upload artifacts over HTTP and
   need no access to this machine's disk beyond the pipeline root that kfp.local mounts.
2. Runs `genrec run --runner docker --image IMAGE` (kfp.local DockerRunner: every task in a container from IMAGE).
3. Loads the registered model with mlflow.pyfunc.load_model("models:/<name>@champion") here, outside the
   containers, and scores a few histories with it.
With --compare it also runs the same config with the subprocess runner and prints both times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path, proxied_artifacts: bool = True, timeout_s: float = 120, port: int = 0) -> Iterator[str]:
    """An MLflow server on 127.0.0.1 with a sqlite store under root; yields its URI.

    proxied_artifacts: clients upload artifacts through the server into root/artifacts (what containers need);
    False: clients write them to root/artifacts themselves (a path on this machine). port 0: a free one.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    artifacts = (["--serve-artifacts", "--artifacts-destination", str(root / "artifacts")] if proxied_artifacts
                 else ["--default-artifact-root", (root / "artifacts").as_uri()])
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--workers", "1", *artifacts],
                            stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"mlflow server did not answer on {uri} in {timeout_s:.0f} s") from None
                time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def genrec_run(config: str, work: Path, tracking_uri: str, *args: str, timeout_s: float = 3600,
               env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """`genrec run` of `config` into `work`, tracking to `tracking_uri` (MLFLOW_TRACKING_URI, over this process's
    environment or `env`); its result and seconds."""
    env = dict(env if env is not None else os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--config", config, *args,
                           f"run.work_dir={work}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    return proc, time.time() - t0


def validated_test_pages(kfp_root: Path) -> Path:
    """The test pages of a kfp.local run under kfp_root: where validate-pages' reference says they are."""
    from genrec.data import tables

    pages = tables.locate(next(kfp_root.glob("*/*/validate-pages/pages")), "pages", "the run has no validated pages")
    return Path(pages) / "split=test"


def load_champion(tracking_uri: str, model_name: str, pages_dir: Path, n: int = 3):
    """Load models:/<model_name>@champion here, outside the containers, and predict for n test histories.
    Leaves this process's MLflow settings as they were (mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI)."""
    import mlflow
    import pandas as pd

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    before_uri, before_env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    finally:
        mlflow.set_tracking_uri(before_uri)
        if before_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before_env
    pages = pd.read_parquet(pages_dir)
    histories = [list(map(int, h)) for h in pages["history_items"] if len(h)][:n]
    return model.predict(pd.DataFrame({"history": histories}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="the CPU image every task runs in (make image builds it)")
    parser.add_argument("--config", default="configs/tiny.yaml", help="genrec config to run")
    parser.add_argument("--work", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--compare", action="store_true", help="also run the subprocess runner and print both times")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="genrec-e2e-docker-")).resolve()
    print(f"work folder: {work}")
    with mlflow_server(work / "mlflow") as uri:
        print(f"MLflow server: {uri}")
        proc, docker_s = genrec_run(args.config, work / "docker", uri, "--runner", "docker", "--image", args.image)
        print(proc.stdout, end="")
        print(proc.stderr, end="", file=sys.stderr)
        if proc.returncode != 0:
            return proc.returncode
        from genrec.config import load_config

        name = load_config(args.config).registry.model_name
        predictions = load_champion(uri, name, validated_test_pages(work / "docker" / "kfp"))
        print(f"\nmodels:/{name}@champion loaded on this machine; first prediction: {predictions.iloc[0].to_dict()}")
        print(f"docker runner:     {docker_s:.0f} s")
        if args.compare:
            proc, sub_s = genrec_run(args.config, work / "subprocess", uri, "--runner", "subprocess")
            if proc.returncode != 0:
                print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            print(f"subprocess runner: {sub_s:.0f} s  (docker / subprocess = {docker_s / sub_s:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
