"""Run the KFP pipeline on this machine with kfp.local (SubprocessRunner, the current Python environment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genrec.config import PipelineConfig


@dataclass
class LocalRun:
    pipeline_root: Path
    succeeded: bool
    error: str = ""

    def metrics_table(self) -> str:
        """The evaluate stage's Markdown table ('' when it did not run)."""
        found = sorted(self.pipeline_root.glob("*/evaluate/evaluation/metrics.md"))
        return found[-1].read_text() if found else ""

    def gate_decision(self) -> dict | None:
        """gate-and-register's decision.json (None when it did not run)."""
        import json

        found = sorted(self.pipeline_root.glob("*/gate-and-register/decision/decision.json"))
        return json.loads(found[-1].read_text()) if found else None

    def data_docs(self) -> list[Path]:
        return sorted(self.pipeline_root.glob("*/*/*/gx/uncommitted/data_docs/local_site/index.html"))


def run_local(cfg: PipelineConfig, pipeline_run_id: str) -> LocalRun:
    """Run the whole pipeline locally; task outputs land under <work_dir>/kfp/<pipeline_run_id>/."""
    from kfp import local

    from pipelines.genrec_pipeline import genrec_pipeline

    root = Path(cfg.run.work_dir).resolve() / "kfp" / pipeline_run_id
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    try:
        genrec_pipeline(config_json=cfg.to_json(), pipeline_run_id=pipeline_run_id)
    except RuntimeError as exc:  # kfp.local raises RuntimeError when a task fails; its log is already printed
        return LocalRun(root, False, str(exc))
    return LocalRun(root, True)
