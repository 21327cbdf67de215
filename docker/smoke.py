"""Import smoke test of an image: torch, DeepSpeed, every genrec stage, the pipeline CLI; prints what it found.

    docker run --rm -v "$PWD/docker/smoke.py:/tmp/smoke.py:ro" IMAGE python /tmp/smoke.py [--expect cpu|cuda]

A script, not `python -c`: importing Great Expectations under `python -c` exits early (NOTES.md).
"""

import argparse
import importlib
import pkgutil
import subprocess
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--expect", choices=["cpu", "cuda"], default="cpu", help="the torch build the image should have")
args = parser.parse_args()

import deepspeed  # noqa: E402
import torch  # noqa: E402

import genrec.stages  # noqa: E402

stages = sorted(m.name for m in pkgutil.iter_modules(genrec.stages.__path__))
for name in stages:
    importlib.import_module(f"genrec.stages.{name}")
assert len(stages) == 11, stages
built_for = "cuda" if torch.version.cuda else "cpu"
assert built_for == args.expect, f"torch {torch.__version__} is a {built_for} build, expected {args.expect}"
if args.expect == "cpu":
    from deepspeed.git_version_info import installed_ops

    assert installed_ops["deepspeed_shm_comm"], "DeepSpeed's CPU comm op is not prebuilt: the first init would compile it"
help_text = subprocess.run(["genrec", "--help"], capture_output=True, text=True, check=True).stdout
assert "run" in help_text and "train-sft" in help_text
print(f"python {sys.version.split()[0]}; torch {torch.__version__} ({built_for}, CUDA {torch.version.cuda}, "
      f"GPU visible: {torch.cuda.is_available()}); deepspeed {deepspeed.__version__}; "
      f"{len(stages)} genrec stages import; genrec --help runs")
