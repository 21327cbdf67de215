"""Shared by the benchmarks that drive whole stages: run one `genrec` CLI command, return its wall time."""

import subprocess
import sys
import time


def genrec(*args: str) -> float:
    """Run `python -m genrec.cli ARGS` (stdout hidden, progress on stderr); raise if it fails; seconds taken."""
    t = time.time()
    subprocess.run([sys.executable, "-m", "genrec.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.time() - t
