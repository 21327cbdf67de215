"""SFT with DeepSpeed on CPU: a killed run resumes to the same result, two processes via torchrun, and the stage's
outputs and errors. The data is a tiny hand-made catalog where the next item follows from the last one."""

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
    """pages/ (train + test) and sids/ for 64 items; user u walks the catalog with step 1 + u % 3."""
    root = tmp_path_factory.mktemp("sftdata")
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        step, pos, seen = 1 + u % 3, int(rng.integers(N_ITEMS)), []
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


def test_a_killed_run_resumes_to_the_same_model(sft_data, tmp_path, mlflow_server):
    steps = ["sft.max_steps=300", "sft.checkpoint_every=25", "sft.log_every=25"]
    whole = subprocess.run(_cmd(sft_data, tmp_path / "whole", mlflow_server, *steps), env=_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
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
    a, b = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("whole", "killed"))
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    # and training did something: the weights moved from the initialisation of a fresh 0-step model
    assert json.loads((tmp_path / "whole" / "report.json").read_text())["final_loss"] < np.log(4 + 12) - 0.5


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
