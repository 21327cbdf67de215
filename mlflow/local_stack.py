"""The team's MLflow server on one machine: PostgreSQL + an S3-compatible object store + `mlflow server` with basic auth.

    python mlflow/local_stack.py up   [--dir work/mlflow-server] [--port 5000] [--s3-endpoint URL] [--image IMAGE]
    python mlflow/local_stack.py down [--dir work/mlflow-server]
    python mlflow/local_stack.py status [--dir work/mlflow-server]

Every password comes from the environment (see mlflow/README.md), none from a file:

    MLFLOW_AUTH_ADMIN_PASSWORD     the MLflow admin's (user `admin`, or MLFLOW_AUTH_ADMIN_USERNAME)
    MLFLOW_FLASK_SERVER_SECRET_KEY the auth app's CSRF key (any long random string; the same for every server worker)
    MLFLOW_TRACKING_USERNAME       the pipeline user `up` creates (the same variables the pipeline reads)
    MLFLOW_TRACKING_PASSWORD
    PGPASSWORD                     the PostgreSQL role `mlflow` (libpq reads it; no password in any URI)
    AWS_ACCESS_KEY_ID              the object store's, used by the server only: clients upload through it
    AWS_SECRET_ACCESS_KEY

`up` starts, under --dir: a PostgreSQL cluster on 127.0.0.1 (databases `mlflow` and `mlflow_auth`), the object
store (moto's S3 server, in memory: for trying things and for tests; pass --s3-endpoint to use a real one such as
MinIO), and the server on http://127.0.0.1:PORT with proxied artifacts in s3://genrec-mlflow, started by
server-entrypoint.sh (the server image's entry point) in this Python environment, or from the image (--image). It waits until the server
answers, creates the pipeline user, prints the environment a client needs, and returns; `down` stops all three.
The test suite (tests/test_tracking_server.py) drives the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

BUCKET = "genrec-mlflow"
DB_USER = "mlflow"
REQUIRED_ENV = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class StackError(RuntimeError):
    """Something the stack could not do; the message says what to fix."""


@dataclass
class Stack:
    """Where the parts of a running stack listen, and their process ids (saved as <dir>/stack.json)."""

    dir: str
    uri: str
    pg_port: int
    s3_endpoint: str
    pg_dir: str = ""
    server_pid: int = 0
    s3_pid: int = 0  # 0: an object store this script did not start
    server_container: str = ""  # the server runs from the server image (--image), not from this Python

    def backend_store_uri(self, database: str = "mlflow") -> str:
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.pg_port}/{database}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_env() -> list[str]:
    return [k for k in REQUIRED_ENV if not os.environ.get(k)]


def throwaway_secrets(pipeline_user: str = "pipeline") -> dict[str, str]:
    """Fresh random values for every REQUIRED_ENV variable: for tests and benchmarks, never for a stack you keep."""
    import secrets

    values = {k: secrets.token_urlsafe(24) for k in REQUIRED_ENV}
    return {**values, "MLFLOW_TRACKING_USERNAME": pipeline_user, "AWS_ACCESS_KEY_ID": "genrec-throwaway"}


@contextlib.contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    """os.environ with `values` set (None: unset) inside the block, as it was after."""
    def apply(settings: dict[str, str | None]) -> None:
        for key, value in settings.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    saved = {k: os.environ.get(k) for k in values}
    try:
        apply(values)
        yield
    finally:
        apply(saved)


# ---- PostgreSQL ------------------------------------------------------------------------------------------------------

def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise StackError(f"PostgreSQL's {name} is not installed: apt-get install postgresql (Debian/Ubuntu), "
                         "or use your own server (mlflow/README.md)")
    return found


def _as_pg_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; as root, run it as the `postgres` user that Debian's package creates."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_postgres(pg: Path, port: int) -> None:
    """A cluster in `pg` (created on first use) whose superuser is `mlflow` (password $PGPASSWORD), listening on
    127.0.0.1:port."""
    data, sock = pg / "data", pg / "sock"
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        sock.mkdir(parents=True, exist_ok=True)
        pwfile = pg / ".pw"
        pwfile.write_text(os.environ["PGPASSWORD"])  # read once by initdb, then removed
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            for p in (pg, data, sock, pwfile):
                shutil.chown(p, "postgres")
            if subprocess.run(_as_pg_user(["test", "-w", str(data)])).returncode != 0:
                raise StackError(f"PostgreSQL runs as user postgres, who cannot reach {pg}: pass --pg-dir in a folder "
                                 "it can reach (every folder above it must be open to it)")
        try:
            _run(_as_pg_user([pg_bin("initdb"), "-D", str(data), "-U", DB_USER, "--pwfile", str(pwfile),
                              "--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions"]), "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    _run(_as_pg_user([pg_bin("pg_ctl"), "-D", str(data), "-l", str(pg / "postgres.log"), "-o", opts, "-w",
                      "start"]), "pg_ctl start")
    for db in ("mlflow", "mlflow_auth"):
        exists = _run([pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, "-d", "postgres", "-tAc",
                       f"SELECT 1 FROM pg_database WHERE datname = '{db}'"], "psql").strip()
        if not exists:
            _run([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, db], "createdb")


def stop_postgres(pg: Path) -> None:
    data = pg / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run(_as_pg_user([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, text=True)


# ---- object store ----------------------------------------------------------------------------------------------------

def start_moto(root: Path, port: int) -> int:
    """moto's S3 server on 127.0.0.1:port (in memory); returns its pid."""
    log = open(root / "s3.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_http(f"http://127.0.0.1:{port}/", proc, root / "s3.log", "the S3 server (moto)", ok=(200, 403, 404))
    return proc.pid


def ensure_bucket(endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET)


# ---- the MLflow server -----------------------------------------------------------------------------------------------

ENTRYPOINT = Path(__file__).with_name("server-entrypoint.sh")


def server_env(root: Path, stack: Stack, workers: int) -> dict[str, str]:
    """The environment of server-entrypoint.sh (the server image's entry point, run here on this machine)."""
    return dict(os.environ, MLFLOW_BACKEND_STORE_URI=stack.backend_store_uri(),
                MLFLOW_AUTH_DATABASE_URI=stack.backend_store_uri("mlflow_auth"),
                MLFLOW_ARTIFACTS_DESTINATION=f"s3://{BUCKET}/", MLFLOW_S3_ENDPOINT_URL=stack.s3_endpoint,
                MLFLOW_AUTH_CONFIG_PATH=str(root / "basic_auth.ini"), MLFLOW_HOST="127.0.0.1",
                MLFLOW_PORT=stack.uri.rsplit(":", 1)[1], MLFLOW_WORKERS=str(workers),
                AWS_DEFAULT_REGION=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                # Each login check is a deliberately slow password hash, on every request: trusting a checked login
                # for 60 s makes the tiny pipeline 1.8x faster (bench/results/mlflow_server.md).
                MLFLOW_AUTH_CACHE_TTL_SECONDS=os.environ.get("MLFLOW_AUTH_CACHE_TTL_SECONDS", "60"),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def start_server(root: Path, stack: Stack, workers: int = 2) -> int:
    """`mlflow server` with basic auth over PostgreSQL and proxied artifacts in the bucket; returns its pid."""
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=server_env(root, stack, workers), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    _wait_http(f"{stack.uri}/health", proc, root / "server.log", "mlflow server", timeout_s=180)
    return proc.pid


def start_server_container(root: Path, stack: Stack, image: str, workers: int = 2) -> str:
    """The same server from the server image (mlflow/Dockerfile), host network; returns the container's id.
    Secret values reach it through `docker run -e NAME` (the value from this process's environment), not argv."""
    env = server_env(root, stack, workers)
    names = ["MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI", "MLFLOW_ARTIFACTS_DESTINATION",
             "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_HOST", "MLFLOW_PORT", "MLFLOW_WORKERS", "AWS_DEFAULT_REGION",
             "MLFLOW_AUTH_CACHE_TTL_SECONDS",
             *[k for k in REQUIRED_ENV if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")]]
    args = [a for name in names for a in ("-e", name)]
    cid = _run(["docker", "run", "-d", "--network", "host", *args, image], "docker run", env=env).strip()
    log = root / "server.log"
    deadline = time.time() + 180
    while True:
        state = _run(["docker", "inspect", "-f", "{{.State.Running}}", cid], "docker inspect").strip()
        try:
            with urllib.request.urlopen(f"{stack.uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return cid
        except OSError:
            pass
        if state != "true" or time.time() > deadline:
            log.write_text(subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stderr)
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
            raise StackError(f"the server container from {image} did not answer on {stack.uri}; see {log}")
        time.sleep(1)


def _admin_request(stack: Stack, method: str, path: str, body: dict) -> dict:
    admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    token = b64encode(f"{admin}:{os.environ['MLFLOW_AUTH_ADMIN_PASSWORD']}".encode()).decode()
    req = urllib.request.Request(f"{stack.uri}{path}", data=json.dumps(body).encode(), method=method,
                                 headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise StackError(f"{method} {path} as {admin}: HTTP {exc.code}: {exc.read()[:300]!r}") from None


def create_user(stack: Stack, username: str, password: str) -> None:
    """Create a user (the admin's credentials from the environment); an existing user keeps its password."""
    try:
        _admin_request(stack, "POST", "/api/2.0/mlflow/users/create", {"username": username, "password": password})
    except StackError as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise


# ---- up / down -------------------------------------------------------------------------------------------------------

def up(root: Path, port: int = 5000, s3_endpoint: str = "", workers: int = 2, pg_dir: Path | None = None,
       image: str = "") -> Stack:
    """Start PostgreSQL (its data in pg_dir, default root/pg), the object store (unless s3_endpoint names one) and the
    server (from the server image when `image` is given); create the pipeline user."""
    missing = missing_env()
    if missing:
        raise StackError(f"set {', '.join(missing)} in the environment first (passwords never come from files; "
                         "mlflow/README.md)")
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if (root / "stack.json").exists():
        raise StackError(f"a stack already runs from {root} (stack.json): `down` it first")
    stack = Stack(str(root), f"http://127.0.0.1:{port}", free_port(), s3_endpoint, str((pg_dir or root / "pg").resolve()))
    try:
        start_postgres(Path(stack.pg_dir), stack.pg_port)
        if not s3_endpoint:
            s3_port = free_port()
            stack.s3_endpoint = f"http://127.0.0.1:{s3_port}"
            stack.s3_pid = start_moto(root, s3_port)
        ensure_bucket(stack.s3_endpoint)
        if image:
            stack.server_container = start_server_container(root, stack, image, workers)
        else:
            stack.server_pid = start_server(root, stack, workers)
        (root / "stack.json").write_text(json.dumps(asdict(stack), indent=2))
        create_user(stack, os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    except BaseException:
        down(root, stack)
        raise
    return stack


def load(root: Path) -> Stack | None:
    path = root.resolve() / "stack.json"
    return Stack(**json.loads(path.read_text())) if path.exists() else None


def down(root: Path, stack: Stack | None = None) -> None:
    """Stop what `up` started under root (the data stays: `up` again reuses the PostgreSQL cluster)."""
    root = root.resolve()
    stack = stack or load(root)
    if stack:
        for pid in (stack.server_pid, stack.s3_pid):
            _kill_group(pid)
        if stack.server_container:
            subprocess.run(["docker", "rm", "-f", stack.server_container], capture_output=True)
    if stack:
        stop_postgres(Path(stack.pg_dir))
    (root / "stack.json").unlink(missing_ok=True)


def _kill_group(pid: int) -> None:
    if not pid:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)


# ---- helpers ---------------------------------------------------------------------------------------------------------

def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise StackError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-1500:]}")
    return proc.stdout


def _wait_http(url: str, proc: subprocess.Popen, log: Path, what: str, timeout_s: float = 60,
               ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None:
            raise StackError(f"{what} exited ({proc.returncode}); the end of {log}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        if time.time() > deadline:
            raise StackError(f"{what} did not answer on {url} in {timeout_s:.0f} s; see {log}")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, default=Path("work/mlflow-server"), help="State folder [work/mlflow-server].")
    parser.add_argument("--port", type=int, default=5000, help="Port of the server on 127.0.0.1 [5000].")
    parser.add_argument("--s3-endpoint", default="", help="An S3-compatible store to use (e.g. MinIO's http://host:9000) "
                                                          "instead of starting moto's in-memory one.")
    parser.add_argument("--workers", type=int, default=2, help="Server worker processes [2].")
    parser.add_argument("--image", default="", help="Run the server from this server image (make mlflow-image) instead "
                                                    "of this Python environment.")
    parser.add_argument("--pg-dir", type=Path, default=None, help="PostgreSQL's data folder [DIR/pg]; as root, one the "
                                                                 "`postgres` user can reach.")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            stack = up(args.dir, args.port, args.s3_endpoint, args.workers, args.pg_dir, args.image)
            print(f"MLflow server: {stack.uri} (PostgreSQL 127.0.0.1:{stack.pg_port}, artifacts s3://{BUCKET} at "
                  f"{stack.s3_endpoint}; logs in {stack.dir})")
            print(f"pipeline user {os.environ['MLFLOW_TRACKING_USERNAME']!r} is ready; a client needs:\n"
                  f"  export MLFLOW_TRACKING_URI={stack.uri}\n"
                  "  export MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=...   (as above)")
        elif args.command == "down":
            down(args.dir)
            print(f"stopped the stack in {args.dir}")
        else:
            stack = load(args.dir)
            print(json.dumps(asdict(stack), indent=2) if stack else f"no stack runs from {args.dir}")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
