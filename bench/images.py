"""Image sizes and build times, and the pipeline's time in containers against the subprocess runner, in one run.

    python bench/images.py [--base-image IMAGE] [--gpu] [--out bench/results/images.md]

1. CPU image: a cold build (docker build --no-cache; the wheelhouse and the base image already here), then a
   rebuild after a code change (a comment appended to a copy of one module), which should reuse every dependency
   layer; sizes and what dominates the image's /opt/venv.
2. GPU image (--gpu): a cold build and its size, and docker/smoke.py in it on this machine's CPU.
3. docker/e2e.py --compare on configs/tiny.yaml: the docker runner and the subprocess runner, same config, same
   MLflow server, one after the other.
Needs a Docker daemon (../shared/scripts/dockerd-up) and make wheelhouse (make image OFFLINE=1 fills it).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE = "genrec-bench:cpu"
GPU_IMAGE = "genrec-bench:gpu"


def sh(cmd: str, cwd: Path = REPO) -> tuple[str, float]:
    """Run a shell command; its output and seconds. Fails loudly."""
    t0 = time.time()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout, time.time() - t0


def size_gb(image: str) -> float:
    return int(sh(f"docker image inspect -f '{{{{.Size}}}}' {image}")[0]) / 1e9


def build(dockerfile: str, tag: str, base: str, extra: str = "", context: str = ".") -> float:
    args = f"--network host --build-arg PIP_NO_INDEX=1 {f'--build-arg BASE_IMAGE={base}' if base else ''} {extra}"
    return sh(f"DOCKER_BUILDKIT=0 docker build {args} -f {dockerfile} -t {tag} {context}")[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-image", default="", help="BASE_IMAGE for both builds (default: the Dockerfiles' own)")
    parser.add_argument("--gpu", action="store_true", help="also build the GPU image (needs make wheelhouse-gpu)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "images.md"))
    args = parser.parse_args()
    rows, notes = [], []

    cold = build("docker/Dockerfile", IMAGE, args.base_image, "--no-cache")
    with tempfile.TemporaryDirectory() as tmp:  # a code change in a copy of the tree, not in the checkout
        tree = Path(tmp) / "tree"
        shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(".venv", ".git", "work", ".cache", "wheelhouse-gpu"))
        with open(tree / "src" / "genrec" / "plots.py", "a") as f:
            f.write("\n# a code change\n")
        warm = build("docker/Dockerfile", IMAGE, args.base_image, context=str(tree))
    rows.append(("CPU runtime (docker/Dockerfile)", size_gb(IMAGE), cold, warm))
    venv, _ = sh(f"docker run --rm --network host {IMAGE} sh -c "
                 "'du -sm /opt/venv/lib/python3.11/site-packages/* | sort -rn | head -6; du -sm /opt/venv /usr/lib/jvm'")
    notes.append("Largest parts of the CPU image (MB, `du -sm` in the image):\n\n```\n" + venv.strip() + "\n```")

    if args.gpu:
        cold_gpu = sh("tar -c --exclude=__pycache__ pyproject.toml constraints.txt README.md src spark_jobs components "
                      "pipelines docker/Dockerfile.gpu docker/requirements.py docker/wheelhouse docker/wheelhouse-gpu | "
                      f"DOCKER_BUILDKIT=0 docker build --no-cache --network host --build-arg PIP_NO_INDEX=1 "
                      f"{f'--build-arg BASE_IMAGE={args.base_image}' if args.base_image else ''} "
                      f"-f docker/Dockerfile.gpu -t {GPU_IMAGE} -")[1]
        rows.append(("GPU trainer (docker/Dockerfile.gpu)", size_gb(GPU_IMAGE), cold_gpu, float("nan")))
        smoke, _ = sh(f"docker run --rm --network host -v {REPO}/docker/smoke.py:/tmp/smoke.py:ro {GPU_IMAGE} "
                      "python /tmp/smoke.py --expect cuda 2>&1 | tail -1")
        notes.append(f"GPU image smoke test on this machine's CPU: `{smoke.strip()}`")

    e2e, _ = sh(f"{sys.executable} docker/e2e.py --image {IMAGE} --config configs/tiny.yaml --compare")
    docker_s = float(re.search(r"^docker runner:\s+(\d+) s", e2e, re.M).group(1))
    sub = re.search(r"^subprocess runner:\s+(\d+) s\s+\(docker / subprocess = ([0-9.]+)\)", e2e, re.M)
    lines = ["# Images and the pipeline in containers", "",
             f"`python bench/images.py{' --gpu' if args.gpu else ''}` on {time.strftime('%Y-%m-%d')}, 2-core machine, "
             "legacy Docker builder, dependencies from docker/wheelhouse (no index), base "
             f"`{args.base_image or 'the Dockerfiles default'}`.", "",
             "| image | size (GB) | cold build (s) | rebuild after a code change (s) |", "|---|---|---|---|"]
    lines += [f"| {name} | {size:.2f} | {c:.0f} | {'' if w != w else f'{w:.0f}'} |" for name, size, c, w in rows]
    lines += ["", *[n + "\n" for n in notes],
              "The tiny config (configs/tiny.yaml, all 11 tasks), one MLflow server, the two runners one after the other:", "",
              "| runner | seconds |", "|---|---|", f"| docker (every task in its container) | {docker_s:.0f} |",
              f"| subprocess (this venv) | {sub.group(1)} |", f"| docker / subprocess | {sub.group(2)} |", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
