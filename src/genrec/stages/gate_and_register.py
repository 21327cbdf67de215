"""Stage gate-and-register: evaluation metrics + thresholds + the current champion -> a decision, and a model
version in the MLflow registry.

Reads evaluate's folder (metrics_valid.json, or metrics.json with gate.split=test), the model folder that was evaluated (align's model/) and
assign-sids' folder. Writes into `out_dir`: decision.json, decision.md and decision.html.

The gate (genrec.registry.gate) applies the config's bounds and, when a champion exists, the regression
limits against the metrics recorded on the champion's version. Then, with registry.enabled:
- a model whose content (weights, config, SID table, serving settings) is already registered reuses that
  version: rerunning an unchanged pipeline creates no duplicate;
- otherwise the pyfunc is logged in this stage's run and registered as a new version;
- pass: alias `challenger`, and `champion` when it beats the champion on gate.promote_metric (or there is
  none); fail: the version is tagged rejected and gets no alias.
All of this happens inside the stage, so kfp.local and a Kubernetes run decide the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from genrec import stage_outputs, tracking
from genrec.config import PipelineConfig
from genrec.errors import InputDataError
from genrec.model.genrec_model import model_folder
from genrec.registry import mlflow_registry as reg
from genrec.registry.gate import decide, decision_html, decision_markdown, flatten_metrics


def run_gate_and_register(cfg: PipelineConfig, eval_dir: str | Path, model_dir: str | Path, sids_dir: str | Path,
                          out_dir: str | Path, pipeline_run_id: str) -> dict:
    """Decide and register; returns the decision (also decision.json) with the registered version."""
    eval_dir, model_dir, sids_dir, out_dir = map(Path, (eval_dir, model_dir, sids_dir, out_dir))
    out_dir = stage_outputs.begin(out_dir, "gate-and-register", pipeline_run_id, {"evaluation": eval_dir, "model": model_dir, "sids": sids_dir})
    model_dir = model_folder(model_dir)
    table = eval_dir / ("metrics_valid.json" if cfg.gate.split == "valid" else "metrics.json")
    if not table.is_file():
        hint = "run evaluate first" if not (eval_dir / "metrics.json").is_file() else (
            "evaluate found no validation requests: set sessionize.split.valid_days > 0 (or split.mode="
            "leave_one_out), or gate.split=test to judge the test table")
        raise InputDataError(f"{table} not found ({hint})")
    metrics = flatten_metrics(json.loads(table.read_text()))
    name = cfg.registry.model_name
    serving = {"top_k": cfg.registry.top_k, "beam_width": max(cfg.registry.beam_width, cfg.registry.top_k),
               "max_history": cfg.model.max_history, "item_rerank_weight": cfg.eval.item_rerank_weight}
    with tracking.stage_run(cfg, "gate-and-register", pipeline_run_id) as track:
        track.params({"gate": cfg.gate.model_dump(mode="json"), "registry": cfg.registry.model_dump(mode="json")})
        digest = reg.content_hash(model_dir, sids_dir, serving)
        existing = reg.find_version(name, digest)
        champ = reg.champion(name)
        # Judged against the champion unless this very model is the champion (a rerun): then against its bounds only.
        against = champ if champ is not None and (existing is None or champ.version != existing.version) else None
        decision = decide(metrics, reg.version_metrics(against) if against else None, cfg.gate,
                          against.version if against else None)
        if champ is not None and against is None and decision.passed:
            decision.promote = False
            decision.reason = f"passed; this same model is already the champion (version {champ.version})"
        result = {"decision": decision.to_dict(), "model_name": name, "content_hash": digest, "version": None,
                  "new_version": False, "champion_version": None}
        if cfg.registry.enabled:
            tags = {reg.GATE_TAG: "passed" if decision.passed else "rejected", "genrec.reason": decision.reason[:4000],
                    reg.METRICS_TAG: json.dumps(metrics), tracking.PIPELINE_TAG: pipeline_run_id}
            if existing is None:
                mv = reg.log_and_register(name, model_dir, sids_dir, serving, {reg.HASH_TAG: digest, **tags},
                                          cfg.to_yaml())
                result["new_version"] = True
            else:
                mv = existing
                if existing.tags.get(reg.GATE_TAG) == "passed" and not decision.passed:
                    tags[reg.GATE_TAG] = "passed"  # a version that passed once keeps its record; this run is rejected
                    decision.reason += f" (version {mv.version} passed an earlier gate; its aliases are left as they are)"
            tags["genrec.reason"] = decision.reason[:4000]
            reg.apply_decision(name, mv.version, decision.passed, decision.promote, tags)
            result["version"] = str(mv.version)
            new_champ = reg.champion(name)
            result["champion_version"] = str(new_champ.version) if new_champ else None
        note = f"Judged on the {cfg.gate.split} split ({table.name}). " + _registry_note(result)
        result["decision"] = decision.to_dict()
        (out_dir / "decision.json").write_text(json.dumps(result, indent=2))
        (out_dir / "decision.md").write_text(decision_markdown(decision, note))
        (out_dir / "decision.html").write_text(decision_html(decision, note))
        track.tag("genrec.gate", "passed" if decision.passed else "rejected")
        track.metrics({"gate/passed": float(decision.passed), "gate/promoted": float(decision.promote)})
        track.artifact(out_dir / "decision.md", "gate")
        track.artifact(out_dir / "decision.html", "gate")
        track.json(result, "gate/decision.json")
    stage_outputs.complete(out_dir)
    return result


def _registry_note(result: dict) -> str:
    if result["version"] is None:
        return "Registry disabled (registry.enabled=false): nothing registered."
    how = "registered as new version" if result["new_version"] else "already registered (same content) as version"
    return (f"Model `{result['model_name']}` {how} {result['version']}; champion: version "
            f"{result['champion_version'] or 'none'}.")
