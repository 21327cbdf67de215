"""The MLflow model registry side of gate-and-register (with tracking.py, the only code that talks to MLflow).

Version tags written here:
  genrec.content_hash   sha256 of the model weights, its config, the SID table and the serving settings:
                        a rerun with the same result finds its version instead of creating another;
  genrec.metrics        the evaluation metrics the gate judged (JSON), which a later challenger is compared with;
  genrec.gate           passed | rejected (rejected versions never get an alias);
  genrec.pipeline_run_id, genrec.reason.
Aliases: `challenger` = the latest version that passed; `champion` = the version serving is told to use.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

HASH_TAG = "genrec.content_hash"
METRICS_TAG = "genrec.metrics"
GATE_TAG = "genrec.gate"
CHAMPION, CHALLENGER = "champion", "challenger"
ENTRY = Path(__file__).with_name("pyfunc_entry.py")


def _client():
    import mlflow

    return mlflow.MlflowClient()


def content_hash(model_dir: Path, sids_dir: Path, serving: dict) -> str:
    """What makes two registered models serve the same: weights, model config, SID table, serving settings.

    Not the RQ-KMeans codebooks: serving does not read them, and they differ in the 8th decimal between two
    runs of the same pipeline (the text encoder's multi-threaded float sums), which would defeat the rerun check."""
    h = hashlib.sha256()
    for path in (model_dir / "model.safetensors", model_dir / "genrec_model.json", sids_dir / "sid_table.parquet"):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update(json.dumps(serving, sort_keys=True).encode())
    return h.hexdigest()


def find_version(name: str, digest: str):
    """The version of `name` registered with this content hash, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = _client().search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for mv in versions:
        if mv.tags.get(HASH_TAG) == digest:
            return mv
    return None


def champion(name: str):
    """The version holding the champion alias, or None (no registered model or no champion yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def version_metrics(mv) -> dict[str, float]:
    return json.loads(mv.tags.get(METRICS_TAG, "{}"))


def log_and_register(name: str, model_dir: Path, sids_dir: Path, serving: dict, tags: dict[str, str], config_yaml: str):
    """Log the pyfunc (models-from-code: nothing pickled) in the active run and register it as a new version.
    Inside: the model folder, the SID table, serving.json and the pipeline's resolved config.yaml."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    import genrec

    with tempfile.TemporaryDirectory() as tmp:
        serving_path = Path(tmp) / "serving.json"
        serving_path.write_text(json.dumps(serving, indent=2))
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(config_yaml)
        model_copy = Path(tmp) / "model"  # a stable name inside the registered model, whatever the source folder
        shutil.copytree(model_dir, model_copy)
        sids = Path(tmp) / "sids"
        sids.mkdir()
        for f in ("sid_table.parquet", "codebooks.npz"):
            (sids / f).write_bytes((sids_dir / f).read_bytes())
        example_in = pd.DataFrame({"history": [[0, 1, 2]]})
        example_out = pd.DataFrame({"items": [[0] * serving["top_k"]], "scores": [[0.0] * serving["top_k"]]})
        info = mlflow.pyfunc.log_model(
            name="recommender", python_model=str(ENTRY),
            artifacts={"model": str(model_copy), "sids": str(sids), "serving": str(serving_path),
                       "config": str(config_path)},
            code_paths=[str(Path(genrec.__file__).parent)],
            pip_requirements=["torch", "transformers", "safetensors", "numpy", "pandas", "pyarrow", "pydantic", "pyyaml"],
            signature=infer_signature(example_in, example_out, params={"k": serving["top_k"]}))
    return mlflow.register_model(info.model_uri, name, tags=tags)


def apply_decision(name: str, version: str, passed: bool, promote: bool, tags: dict[str, str]) -> None:
    """Tag the version with the decision; set `challenger` when it passed and `champion` when it is promoted."""
    client = _client()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    if passed:
        client.set_registered_model_alias(name, CHALLENGER, version)
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version)
