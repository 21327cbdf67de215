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
