"""Shared by the benchmarks that drive whole stages: run one `genrec` CLI command and return its wall time, run the
data stages once into a work folder, write a metrics table."""

import subprocess
import sys
import time
from pathlib import Path

# each data stage and the folder under <work>/stages/ it writes (the CLI's default output folders)
DATA_STAGES = {"ingest": "ingest", "validate-events": "validated", "sessionize": "sessionized",
               "validate-pages": "pages", "embed-items": "embeddings", "assign-sids": "sids"}


def genrec(*args: str) -> float:
    """Run `python -m genrec.cli ARGS` (stdout hidden, progress on stderr); raise if it fails; seconds taken."""
    t = time.time()
    subprocess.run([sys.executable, "-m", "genrec.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.time() - t


def data_stages(stages: Path, *common: str) -> dict[str, float]:
    """Run the data stages (ingest ... assign-sids) whose output folder under `stages` is missing; seconds each."""
    timings = {}
    for stage, folder in DATA_STAGES.items():
        if not (stages / folder).is_dir():
            print(f"[{stage}]", flush=True)
            timings[stage] = genrec(stage, *common)
    return timings


def metrics_table(first_column: str, rows: dict[str, dict], keys: list[str]) -> list[str]:
    """A Markdown table: one row per name in `rows`, one column per metric in `keys` (4 decimals; nan if missing)."""
    lines = [f"| {first_column} | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    return lines + [f"| {name} | " + " | ".join(f"{r.get(k, float('nan')):.4f}" for k in keys) + " |"
                    for name, r in rows.items()]
