"""SFT with DeepSpeed on CPU: a killed run resumes to the same result, two processes via torchrun, and the stage's
outputs and errors. The data is a tiny hand-made catalog where the next (clicked) item follows from the last one."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

N_ITEMS = 64


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """pages/ (train + test) and sids/ for 64 items; every user walks the catalog: the next item is the last + 1."""
    root = tmp_path_factory.mktemp("sftdata")
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        step, pos, seen = 1, int(rng.integers(N_ITEMS)), []
        for p in range(12):
            nxt = (pos + step) % N_ITEMS
            rows.append({"page_id": f"u{u}p{p}", "user_id": u, "session_id": f"u{u}",
                         "page_start": pd.Timestamp("2026-10-01", tz="UTC") + pd.Timedelta(hours=p),
                         "n_events": 4, "history_items": list(seen[-20:]), "history_ts": [], "history_intensity": [],
                         "ordered_items": [], "carted_items": [], "clicked_items": [nxt],
                         "exposed_items": [int(x) for x in rng.choice(N_ITEMS, 3, replace=False) if x != nxt],
                         "split": "test" if p == 11 else "train"})
            seen.append(nxt)
            pos = nxt
    (root / "pages" / "pages").mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False), root / "pages" / "pages" / "part-0.parquet")
    (root / "sids").mkdir()
    codes = np.stack([np.arange(N_ITEMS) // 16, (np.arange(N_ITEMS) // 4) % 4, np.arange(N_ITEMS) % 4], axis=1)
    pq.write_table(pa.table({"item_id": np.arange(N_ITEMS), "s1": codes[:, 0], "s2": codes[:, 1], "s3": codes[:, 2]}),
                   root / "sids" / "sid_table.parquet")
    np.savez(root / "sids" / "codebooks.npz", level1=np.zeros((4, 2)), level2=np.zeros((4, 2)), level3=np.zeros((4, 2)))
    return root


def _cmd(data, out, mlflow_server, *extra, launcher=None):
    base = launcher or [sys.executable, "-m", "genrec.cli"]
    return base + ["train-sft", "--pages", str(data / "pages"), "--sids", str(data / "sids"), "--out", str(out),
                   "model.size=tiny", "sft.micro_batch_size=8", f"run.tracking_uri={mlflow_server}",
                   "run.experiment=tests", *extra]


def _env(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    return env


STEPS = ["sft.max_steps=300", "sft.checkpoint_every=25", "sft.log_every=25", "sft.target_types=[click]", "sft.lr=3e-3"]


@pytest.fixture(scope="module")
def trained(sft_data, tmp_path_factory, mlflow_server):
    """An uninterrupted 300-step run of the CLI."""
    out = tmp_path_factory.mktemp("whole")
    whole = subprocess.run(_cmd(sft_data, out, mlflow_server, *STEPS), env=_env(out), capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    return out


def test_a_killed_run_resumes_to_the_same_model(sft_data, trained, tmp_path, mlflow_server):
    steps = STEPS
    proc = subprocess.Popen(_cmd(sft_data, tmp_path / "killed", mlflow_server, *steps), env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "model").exists()
    resumed = subprocess.run(_cmd(sft_data, tmp_path / "killed", mlflow_server, *steps), env=_env(tmp_path),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert 0 < report["resumed_from_step"] < 300 and report["steps"] == 300
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (trained, tmp_path / "killed"))
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    # and training learned something: the loss is far below uniform over the 4 specials + 12 codes
    assert json.loads((trained / "report.json").read_text())["final_loss"] < np.log(4 + 12) - 1.0


def test_evaluate_scores_the_model_and_refuses_other_sids(sft_data, trained, tmp_path, make_cfg):
    """The next item follows from the history: the model must beat popularity by far."""
    from genrec.errors import InputDataError
    from genrec.stages.evaluate import run_evaluate

    cfg = make_cfg("eval.ks=[1,10]", "eval.beam_width=10", "eval.sasrec.epochs=30")
    rows = run_evaluate(cfg, trained, sft_data / "pages", sft_data / "sids", tmp_path / "eval", "eval-test")
    assert set(rows) == {"genrec", "genrec_unconstrained", "popularity", "sasrec"}
    assert rows["genrec"]["har"] == 0 and 0 <= rows["genrec_unconstrained"]["har"] <= 1
    assert rows["genrec"]["hr@10"] > rows["popularity"]["hr@10"] + 0.2, rows
    assert (tmp_path / "eval" / "metrics.md").read_text().startswith("# evaluate")
    other = tmp_path / "other_sids"
    other.mkdir()
    table = pq.read_table(sft_data / "sids" / "sid_table.parquet").to_pandas()
    table["s3"] = table["s3"].to_numpy()[::-1]  # same items and codes, other assignment
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), other / "sid_table.parquet")
    (other / "codebooks.npz").write_bytes((sft_data / "sids" / "codebooks.npz").read_bytes())
    with pytest.raises(InputDataError, match="trained on other semantic IDs"):
        run_evaluate(cfg, trained, sft_data / "pages", other, tmp_path / "eval2", "eval-test-2")


def test_two_processes_with_torchrun_and_zero3(sft_data, tmp_path, mlflow_server):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "genrec.cli"]
    run = subprocess.run(_cmd(sft_data, tmp_path / "ddp", mlflow_server, "sft.max_steps=30", "sft.zero_stage=3",
                              launcher=launcher), env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 30 and np.isfinite(report["final_loss"])
    ds = json.loads((tmp_path / "ddp" / "ds_config.json").read_text())
    assert ds["train_batch_size"] == 16 and ds["zero_optimization"]["stage"] == 3
    weights = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    assert all(v.size > 0 for v in weights.values())  # gathered from the ZeRO-3 partitions, not empty shards
