"""The evaluation gate (pure decisions) and gate-and-register against a real MLflow server: no champion yet,
rerun without a duplicate version, a better challenger promoted, a failing model rejected, and the champion
loaded back as a pyfunc that returns items for a history."""

import os
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.config import GateConfig
from genrec.registry.gate import decide

GATE = GateConfig(min_metrics={"genrec/hr@10": 0.1}, max_metrics={"genrec/har": 0.5}, min_lift={},
                  max_regression={"genrec/hr@10": 0.1}, promote_metric="genrec/hr@10")


def test_gate_decisions_on_hand_made_metrics():
    ok = {"genrec/hr@10": 0.30, "genrec/har": 0.2}
    d = decide(ok, None, GATE)
    assert d.passed and d.promote and "no champion" in d.reason
    d = decide({"genrec/hr@10": 0.05, "genrec/har": 0.2}, None, GATE)
    assert not d.passed and not d.promote and "min genrec/hr@10" in d.reason
    d = decide({"genrec/hr@10": 0.30, "genrec/har": 0.7}, None, GATE)
    assert not d.passed and "max genrec/har" in d.reason
    d = decide({"genrec/hr@10": 0.30}, None, GATE)  # a bound on a missing metric fails
    assert not d.passed and any(c.note == "missing" for c in d.checks)
    champion = {"genrec/hr@10": 0.32, "genrec/har": 0.1}
    d = decide(ok, champion, GATE, "3")  # 6% below the champion: within the 10% allowed, but not better
    assert d.passed and not d.promote and d.champion_version == "3"
    d = decide({"genrec/hr@10": 0.25, "genrec/har": 0.2}, champion, GATE, "3")  # 22% below: regression
    assert not d.passed and "regression genrec/hr@10" in d.reason
    d = decide({"genrec/hr@10": 0.33, "genrec/har": 0.2}, champion, GATE, "3")
    assert d.passed and d.promote


def test_the_gate_can_require_beating_a_baseline():
    gate = GATE.model_copy(update={"min_lift": {"popularity/hr@10": 0.1, "sasrec/ndcg@10": 0.0}})
    metrics = {"genrec/hr@10": 0.30, "genrec/ndcg@10": 0.20, "genrec/har": 0.2, "popularity/hr@10": 0.25,
               "sasrec/ndcg@10": 0.19}
    d = decide(metrics, None, gate)  # 0.30 > 1.1 * 0.25 = 0.275 and 0.20 > 0.19
    assert d.passed
    lift = next(c for c in d.checks if c.name == "lift genrec/hr@10 over popularity")
    assert lift.bound == pytest.approx(0.275) and "+20.0%" in lift.note
    d = decide(metrics | {"popularity/hr@10": 0.28}, None, gate)  # 0.30 < 1.1 * 0.28
    assert not d.passed and "lift genrec/hr@10 over popularity" in d.reason
    d = decide(metrics | {"sasrec/ndcg@10": 0.20}, None, gate)  # a tie is not a win
    assert not d.passed and "lift genrec/ndcg@10 over sasrec" in d.reason
    d = decide({k: v for k, v in metrics.items() if k != "popularity/hr@10"}, None, gate)  # a baseline not scored
    assert not d.passed and any(c.note == "missing popularity/hr@10" for c in d.checks)


@pytest.fixture
def model_and_sids(sft_data, tmp_path):
    from genrec.model.genrec_model import build_model
    from genrec.model.vocab import SidMap

    sid_map = SidMap.load(sft_data / "sids")
    torch.manual_seed(0)
    model = build_model("tiny", "", sid_map.sizes, True, sid_map.fingerprint())

    def save(name: str, shift: float = 0.0):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(shift)
        return model.save(tmp_path / name)

    return save, sft_data / "sids"


def _metrics(folder, hr10: float, har: float = 0.1, test_hr10: float = 0.0):
    """evaluate's tables: the validation one the gate judges, and a test one it must not look at."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics_valid.json").write_text(json.dumps({"genrec": {"hr@10": hr10, "ndcg@10": hr10 / 2, "har": har},
                                                           "popularity": {"hr@10": 0.15}}))
    (folder / "metrics.json").write_text(json.dumps({"genrec": {"hr@10": test_hr10, "ndcg@10": 0.0, "har": har},
                                                     "popularity": {"hr@10": 0.9}}))
    return folder


def test_gate_and_register_decisions_in_the_registry(model_and_sids, make_cfg, tmp_path):
    import mlflow
    import pandas as pd

    from genrec.stages.gate_and_register import run_gate_and_register

    save, sids = model_and_sids
    cfg = make_cfg("registry.model_name=genrec-test-registry", "registry.top_k=5", "model.max_history=20",
                   "gate.min_metrics={genrec/hr@10: 0.1}", "gate.max_metrics={genrec/har: 0.5}",
                   "gate.max_regression={genrec/hr@10: 0.1}")
    first = save("m1")
    r1 = run_gate_and_register(cfg, _metrics(tmp_path / "e1", 0.30), first, sids, tmp_path / "g1", "run-1")
    assert r1["decision"]["passed"] and r1["new_version"] and r1["version"] == "1" and r1["champion_version"] == "1"
    assert "PASS" in (tmp_path / "g1" / "decision.md").read_text()
    assert "Judged on the valid split (metrics_valid.json)" in (tmp_path / "g1" / "decision.md").read_text()
    lift = next(c for c in r1["decision"]["checks"] if c["name"].startswith("lift"))
    assert lift["passed"] and lift["bound"] == pytest.approx(0.15)
    assert "<table" in (tmp_path / "g1" / "decision.html").read_text()

    rerun = run_gate_and_register(cfg, _metrics(tmp_path / "e1", 0.30), first, sids, tmp_path / "g1b", "run-2")
    assert not rerun["new_version"] and rerun["version"] == "1" and rerun["champion_version"] == "1"

    better = save("m2", 0.01)
    r2 = run_gate_and_register(cfg, _metrics(tmp_path / "e2", 0.35), better, sids, tmp_path / "g2", "run-3")
    assert r2["decision"]["promote"] and r2["version"] == "2" and r2["champion_version"] == "2"

    worse = save("m3", 0.01)
    r3 = run_gate_and_register(cfg, _metrics(tmp_path / "e3", 0.20), worse, sids, tmp_path / "g3", "run-4")
    assert not r3["decision"]["passed"] and r3["version"] == "3" and r3["champion_version"] == "2"
    assert "regression genrec/hr@10" in r3["decision"]["reason"]

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])  # the session's server (conftest)
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name='genrec-test-registry'")
    assert len(versions) == 3
    v3 = client.get_model_version("genrec-test-registry", "3")
    assert v3.tags["genrec.gate"] == "rejected" and not v3.aliases
    assert client.get_model_version_by_alias("genrec-test-registry", "challenger").version == "2"

    loaded = mlflow.pyfunc.load_model("models:/genrec-test-registry@champion")
    local = mlflow.artifacts.download_artifacts("models:/genrec-test-registry@champion")
    files = {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()}
    assert {"artifacts/config.yaml", "artifacts/serving.json", "artifacts/sids/sid_table.parquet",
            "artifacts/model/model.safetensors"} <= files, files
    out = loaded.predict(pd.DataFrame({"history": [[1, 2, 3], [40]]}))
    assert list(out.columns) == ["items", "scores"] and len(out) == 2
    items = np.array(out["items"].tolist())
    assert items.shape == (2, 5) and ((items >= 0) & (items < 64)).all()
    assert all(np.all(np.diff(s) <= 1e-6) for s in out["scores"])  # best first
    three = loaded.predict(pd.DataFrame({"history": [[1, 2, 3]]}), params={"k": 3})
    assert len(three["items"][0]) == 3
    from genrec.errors import InputDataError

    with pytest.raises(InputDataError, match="999"):
        loaded.predict(pd.DataFrame({"history": [[1, 999]]}))
    # No validation table (a run without a validation split): the error says what to change.
    (tmp_path / "e4").mkdir()
    (tmp_path / "e4" / "metrics.json").write_text("{}")
    with pytest.raises(InputDataError, match=r"metrics_valid.json not found .*valid_days > 0.*gate.split=test"):
        run_gate_and_register(cfg, tmp_path / "e4", worse, sids, tmp_path / "g4", "run-5")


def test_the_registered_model_decodes_with_the_item_rerank_weight_evaluate_used(sft_data, tmp_path):
    from types import SimpleNamespace

    import pandas as pd

    from genrec.model.beam_search import beam_search
    from genrec.model.genrec_model import build_model
    from genrec.model.vocab import SidMap
    from genrec.registry.pyfunc_model import GenRecRecommender

    sid_map = SidMap.load(sft_data / "sids")
    torch.manual_seed(0)
    model = build_model("tiny", "", sid_map.sizes, True, sid_map.fingerprint(), item_embedding_buckets=256)
    with torch.no_grad():
        model.item_table.weight.normal_(std=3.0)
    model.save(tmp_path / "model")
    serving = tmp_path / "serving.json"
    serving.write_text(json.dumps({"top_k": 5, "beam_width": 8, "max_history": 20, "item_rerank_weight": 2.0}))
    served = GenRecRecommender()
    served.load_context(SimpleNamespace(artifacts={"model": str(tmp_path / "model"), "sids": str(sft_data / "sids"),
                                                   "serving": str(serving)}))
    out = served.predict(None, pd.DataFrame({"history": [[1, 2, 3], [40]]}))
    codes = [sid_map.item_codes([1, 2, 3]), sid_map.item_codes([40])]
    want = beam_search(served.model, codes, sid_map, 8, True, item_weight=2.0)
    plain = beam_search(served.model, codes, sid_map, 8, True)
    assert out["items"].tolist() == want.items[:, :5].tolist() != plain.items[:, :5].tolist()
