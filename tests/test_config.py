import json
from pathlib import Path

import pytest

from genrec.config import PipelineConfig, describe_fields, load_config
from genrec.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo.yaml", "movielens.yaml", "amazon_beauty.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, PipelineConfig)


def test_overrides_apply_and_parse_types():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["simulator.n_users=7", "sessionize.split.mode=leave_one_out",
                                                        "simulator.images=false", "sessionize.session_gap_minutes=12.5"])
    assert cfg.simulator.n_users == 7 and cfg.simulator.images is False
    assert cfg.sessionize.split.mode == "leave_one_out" and cfg.sessionize.session_gap_minutes == 12.5
    assert cfg.simulator.n_items == 5000  # untouched keys keep the file's value


def test_a_mapping_setting_is_replaced_by_its_override_while_sections_merge():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["gate.min_lift={}", "gate.min_metrics={genrec/ndcg@10: 0.1}",
                                                        "cluster.gpu.count=2"])
    assert cfg.gate.min_lift == {} and cfg.gate.min_metrics == {"genrec/ndcg@10": 0.1}
    assert cfg.gate.split == "valid" and cfg.cluster.gpu.count == 2 and cfg.cluster.gpu.tasks  # the rest kept


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("simulator:\n  n_userz: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "simulator.n_userz" in str(e.value) and str(f) in str(e.value)


def test_bad_value_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("simulator:\n  n_users: -3\nsource:\n  kind: kafka\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "simulator.n_users" in msg and "source.kind" in msg and str(f) in msg


def test_unknown_override_key_fails():
    with pytest.raises(ConfigError, match="sessionize.gap"):
        load_config(None, ["sessionize.gap=3"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["sessionize"])


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)


def test_every_field_has_help_and_hash_tracks_changes():
    rows = describe_fields()
    assert len(rows) > 30
    assert all(help_text.strip() for _, _, help_text in rows), [k for k, _, h in rows if not h.strip()]
    a, b = load_config(None), load_config(None, ["run.seed=1"])
    assert a.config_hash() == load_config(None).config_hash() != b.config_hash()
    assert PipelineConfig.model_validate_json(a.to_json()) == a


def test_a_password_in_the_config_is_refused_and_never_echoed(tmp_path):
    from genrec.config import config_from_json

    with pytest.raises(ConfigError) as err:
        load_config(None, ["source.path=s3://genrec:hunter2-secret@minio:9000/bucket"])
    msg = str(err.value)
    assert "'source.path' carries a password" in msg and "MLFLOW_TRACKING_PASSWORD" in msg and "hunter2" not in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text("source:\n  path: postgresql://u:hunter2-secret@db/x\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(bad) in str(err.value) and "hunter2" not in str(err.value)
    data = json.loads(load_config().to_json())
    data["source"]["path"] = "https://u:hunter2-secret@host/data"
    with pytest.raises(ConfigError, match="config_json: 'source.path' carries a password"):
        config_from_json(json.dumps(data))
    # A bad value in a file is reported before the scan for passwords, redacted.
    bad.write_text("simulator:\n  n_users: http://u:hunter2-secret@h/\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "bad value for 'simulator.n_users'" in str(err.value) and "http://u:***@h/" in str(err.value)
    assert "hunter2" not in str(err.value)
    # A URI without a password is a value like any other.
    assert load_config(None, ["source.path=s3://bucket/events"]).source.path == "s3://bucket/events"


def test_the_tracking_server_is_not_a_config_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["run.tracking_uri=http://mlflow:5000"])
    assert "unknown key 'run.tracking_uri'" in str(err.value) and "MLFLOW_TRACKING_URI" in str(err.value)


def test_tracking_uri_comes_from_the_environment(monkeypatch, tmp_path):
    from genrec.tracking import TrackingError, tracking_uri

    cfg = load_config(None, [f"run.work_dir={tmp_path}"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(cfg) == "http://mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://pipeline:hunter2-secret@mlflow.example:5000")
    with pytest.raises(TrackingError) as err:
        tracking_uri(cfg)
    assert "hunter2" not in str(err.value) and "MLFLOW_TRACKING_PASSWORD" in str(err.value)


def test_a_generator_loss_weight_without_the_copy_head_is_refused():
    with pytest.raises(ConfigError, match="generator_loss_weight.*needs model.copy_head"):
        load_config(REPO / "configs" / "demo.yaml", ["model.copy_head=false"])
    assert load_config(REPO / "configs" / "demo.yaml", ["model.copy_head=false", "sft.generator_loss_weight=0"])


def test_label_smoothing_with_the_copy_head_is_refused():
    with pytest.raises(ConfigError, match="sft.label_smoothing=0.1 smooths the SID generator"):
        load_config(None, ["model.copy_head=true", "sft.label_smoothing=0.1"])
    assert load_config(None, ["sft.label_smoothing=0.1"]).sft.label_smoothing == 0.1


def test_shuffled_targets_with_point_wise_samples_are_refused():
    with pytest.raises(ConfigError, match="sft.target_order: shuffled orders the items of a page-wise target"):
        load_config(None, ["sft.mode=point", "sft.target_order=shuffled"])
    assert load_config(None, ["sft.target_order=shuffled"]).sft.target_order == "shuffled"


def test_a_sample_subset_of_a_stream_is_refused():
    with pytest.raises(ConfigError, match="sft.max_samples=100 draws a subset.*bound the run with sft.max_steps"):
        load_config(None, ["sft.data=stream", "sft.max_samples=100"])
    assert load_config(REPO / "configs" / "demo.yaml", ["sft.data=stream", "sft.max_samples=0"]).sft.data == "stream"


def test_an_item_softmax_without_item_rows_is_refused():
    with pytest.raises(ConfigError, match="sft.item_softmax_weight=0.5 scores items by their per-item rows"):
        load_config(None, ["sft.item_softmax_weight=0.5"])
    cfg = load_config(None, ["sft.item_softmax_weight=0.5", "model.item_embedding_buckets=1024"])
    assert cfg.sft.item_softmax_weight == 0.5


def test_the_rank_head_needs_ldpo_and_positive_lambdas():
    with pytest.raises(ConfigError, match="align.rsp.enabled needs align.method: ldpo"):
        load_config(None, ["align.rsp.enabled=true"])
    with pytest.raises(ConfigError, match="lambda must be at least 1"):
        load_config(None, ["align.method=ldpo", "align.rsp.enabled=true", "align.rsp.lambdas=[4,0,4]"])
    cfg = load_config(None, ["align.method=ldpo", "align.rsp.enabled=true"])
    assert cfg.align.rsp.lambdas == [10, 10, 10]
