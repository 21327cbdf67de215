"""MLflow tracking: one parent per pipeline run, found again by its tag; a failing stage ends FAILED with its error."""

import mlflow
import pytest

from genrec import tracking
from genrec.data.io import ingest_files
from genrec.errors import InputDataError
from genrec.stages.ingest import run_ingest


def test_parent_is_found_not_duplicated(make_cfg, mlflow_server):
    cfg = make_cfg("run.experiment=tracking")
    a = tracking.ensure_parent_run(cfg, "same-id")
    b = tracking.ensure_parent_run(cfg, "same-id")
    c = tracking.ensure_parent_run(cfg, "other-id")
    assert a == b != c
    run = mlflow.MlflowClient(mlflow_server).get_run(a)
    assert run.data.params["simulator.n_users"] == "150"  # the resolved config, flattened
    assert run.data.tags["genrec.config_hash"] == cfg.config_hash()


def test_failed_stage_is_recorded(make_cfg, mlflow_server, tmp_path):
    cfg = make_cfg("run.experiment=tracking-fail", "source.kind=parquet", f"source.path={tmp_path / 'none'}")
    with pytest.raises(InputDataError, match="events.parquet not found"):
        run_ingest(cfg, tmp_path / "out", "fail-id")
    client = mlflow.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("tracking-fail")
    child = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags["genrec.stage"] == "ingest"][0]
    assert child.info.status == "FAILED"
    assert "events.parquet not found" in mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/error.txt")


def test_simulator_ingest_logs_truth_and_counts(make_cfg, mlflow_server, tmp_path):
    cfg = make_cfg("run.experiment=tracking-ingest", "simulator.images=true")
    manifest = run_ingest(cfg, tmp_path / "out", "ingest-id")
    files = ingest_files(tmp_path / "out")  # beside the tables, under run.data_root: not in the small output folder
    assert files != tmp_path / "out" and (files / "ground_truth.npz").is_file()
    assert len(list((files / "images").glob("*.png"))) == manifest["n_items"] == 300
    assert not any(p.suffix in (".npz", ".png", ".parquet") for p in (tmp_path / "out").rglob("*"))
    client = mlflow.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("tracking-ingest")
    child = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags["genrec.stage"] == "ingest"][0]
    assert child.data.metrics["n_events"] == manifest["n_events"]
    assert {d.dataset.name for d in child.inputs.dataset_inputs} == {"events_raw"}


def test_tracking_leaves_the_environment_as_it_was(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; genrec reads the user's choice there, so it must not stick."""
    import os

    from genrec.config import load_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = load_config(None, [f"run.work_dir={tmp_path / 'a'}", "run.experiment=env"])
    tracking.ensure_parent_run(first, "env-1")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    second = load_config(None, [f"run.work_dir={tmp_path / 'b'}", "run.experiment=env"])
    assert tracking.tracking_uri(second) == f"sqlite:///{tmp_path / 'b'}/mlflow.db"
