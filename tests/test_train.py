"""SFT with DeepSpeed on CPU: a killed run resumes to the same result, two processes via torchrun, and the stage's
outputs and errors. The data is a tiny hand-made catalog where the next (clicked) item follows from the last one."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

from conftest import STEPS, kill_at_first_checkpoint, sft_cmd as _cmd, sub_env as _env


def _kill_then_resume(sft_data, out, mlflow_server, steps: list[str], env: dict) -> dict:
    """SIGKILL a train-sft run at its first checkpoint, run it again into the same folder; the resumed report."""
    kill_at_first_checkpoint(_cmd(sft_data, out, mlflow_server, *steps), out.with_name(out.name + ".partial") /
                             "checkpoints", env)
    assert not out.exists()  # the killed run's files stay in its work folder
    assert not (out.with_name(out.name + ".partial") / "model").exists()
    resumed = subprocess.run(_cmd(sft_data, out, mlflow_server, *steps), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def _bit_identical(a_dir, b_dir) -> bool:
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (a_dir, b_dir))
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_killed_run_resumes_to_the_same_model(sft_data, trained, tmp_path, mlflow_server):
    report = _kill_then_resume(sft_data, tmp_path / "killed", mlflow_server, STEPS, _env(tmp_path))
    assert 0 < report["resumed_from_step"] < 300 and report["steps"] == 300
    assert _bit_identical(trained, tmp_path / "killed")
    # and training learned something: the loss is far below uniform over the 4 specials + 12 codes
    assert json.loads((trained / "report.json").read_text())["final_loss"] < np.log(4 + 12) - 1.0


def test_a_killed_streaming_run_resumes_to_the_same_model(sft_data, tmp_path, mlflow_server):
    """sft.data=stream with two data-loader workers: the killed run's successor replays each worker's stream to the
    checkpoint's micro-batch, across epoch ends, and ends bit-identical to an uninterrupted run."""
    steps = ["model.dropout=0.1", "sft.max_steps=80", "sft.checkpoint_every=25", "sft.log_every=25",
             "sft.target_types=[click]", "sft.lr=3e-3", "sft.data=stream", "sft.loader_workers=2",
             "sft.shuffle_buffer=64", "sft.length_window=4", "sft.target_order=shuffled"]
    whole = subprocess.run(_cmd(sft_data, tmp_path / "whole", mlflow_server, *steps), env=_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    report = json.loads((tmp_path / "whole" / "report.json").read_text())
    # 360 samples, one row group split by rows into 2 shards; an epoch: the smallest shard's micro-batches of 8 from each
    assert (report["data"], report["n_samples"], report["stream_shards"]) == ("stream", 360, 2)
    assert report["samples_per_epoch"] == 2 * 8 * (report["stream_smallest_shard"] // 8) < 80 * 8  # epochs end
    again = _kill_then_resume(sft_data, tmp_path / "killed", mlflow_server, steps, _env(tmp_path))
    assert 0 < again["resumed_from_step"] < 80 and again["steps"] == 80
    assert _bit_identical(tmp_path / "whole", tmp_path / "killed")
    assert report["final_loss"] < np.log(4 + 12) - 1.0  # it learned: far below uniform over specials + codes


def test_the_stage_shuffles_page_targets_only_when_asked(sft_data):
    from genrec.config import load_config
    from genrec.stages.train_sft import prepare_training

    args = ["model.size=tiny", "sft.target_types=[click,expose]"]
    plain = prepare_training(load_config(None, args), sft_data, sft_data / "sids")
    shuffled = prepare_training(load_config(None, [*args, "sft.target_order=shuffled"]), sft_data, sft_data / "sids")
    assert plain.shuffle_seed is None and shuffled.shuffle_seed == 42 and shuffled.report["target_order"] == "shuffled"
    rows = np.arange(32)
    assert all(plain.make_batch(rows, 0)[k].equal(plain.make_batch(rows, 1)[k]) for k in ("ids", "labels"))
    by_epoch = [shuffled.make_batch(rows, e)["labels"] for e in (0, 1)]
    assert not by_epoch[0].equal(by_epoch[1])
    assert by_epoch[0].sort().values.equal(by_epoch[1].sort().values)  # the same tokens, in other orders


def test_a_retried_task_resumes_from_the_checkpoint_volume(sft_data, trained, tmp_path, mlflow_server):
    """As on a cluster: checkpoints on a volume (run.checkpoint_root), the retry in a fresh output folder with the
    same pipeline run id."""
    volume = tmp_path / "pvc"
    volume.mkdir()
    args = [*STEPS, f"run.checkpoint_root={volume}", "--pipeline-run-id", "kfp-run-1"]
    kill_at_first_checkpoint(_cmd(sft_data, tmp_path / "attempt-1", mlflow_server, *args),
                             volume / "kfp-run-1" / "train-sft", _env(tmp_path))
    retry = subprocess.run(_cmd(sft_data, tmp_path / "attempt-2", mlflow_server, *args), env=_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    report = json.loads((tmp_path / "attempt-2" / "report.json").read_text())
    assert 0 < report["resumed_from_step"] < 300 and report["steps"] == 300
    assert not (tmp_path / "attempt-2" / "checkpoints").exists()
    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (trained, tmp_path / "attempt-2"))
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    # A volume that is not there fails at once, naming the key.
    missing = subprocess.run(_cmd(sft_data, tmp_path / "attempt-3", mlflow_server, *STEPS,
                                  f"run.checkpoint_root={tmp_path / 'not-mounted'}"),
                             env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0 and "run.checkpoint_root" in missing.stderr and "not a folder" in missing.stderr


def test_evaluate_scores_the_model_and_refuses_other_sids(sft_data, trained, tmp_path, make_cfg):
    """The next item follows from the history: the model must beat popularity by far."""
    from genrec.errors import InputDataError
    from genrec.stages.evaluate import run_evaluate

    cfg = make_cfg("eval.ks=[1,10]", "eval.beam_width=10", "eval.sasrec.epochs=30",
                   "eval.baselines=[popularity,sasrec,bert4rec]", "eval.sasrec.patience=3")
    rows = run_evaluate(cfg, trained, sft_data / "pages", sft_data / "sids", tmp_path / "eval", "eval-test")
    assert set(rows) == {"genrec", "popularity", "sasrec", "bert4rec"}
    assert rows["bert4rec"]["hr@10"] > rows["popularity"]["hr@10"], rows  # it learned from the sequences
    assert 0 <= rows["genrec"]["har"] <= 1 and rows["popularity"]["har"] == 0
    assert rows["genrec"]["hr@10"] > rows["popularity"]["hr@10"] + 0.2, rows
    assert (tmp_path / "eval" / "metrics.md").read_text().startswith("# evaluate")
    g = rows["genrec"]
    assert 0 <= g["har_top1"] <= 1 and 0 <= g["free_hr@10"] <= 1
    # The per-request top-K recomputes every method's figures, free decoding included (a -1 there is a miss).
    from genrec.eval.metrics import hallucination_rate, ranking_metrics

    topk = pd.read_parquet(tmp_path / "eval" / "topk.parquet")
    assert set(topk["split"]) == {"valid", "test"}
    topk = topk[topk["split"] == "test"]
    assert set(topk["method"]) == {"genrec", "genrec_free", "popularity", "sasrec", "bert4rec"}
    for method, part in topk.groupby("method"):
        part = part.sort_values("request")
        ranked, truths = np.stack(part["ranked_items"]), [set(t) for t in part["true_items"]]
        again = ranking_metrics(ranked, truths, [1, 10])
        row = rows[method.removesuffix("_free")]
        if method == "genrec_free":
            assert again["hr@10"] == pytest.approx(row["free_hr@10"])
            assert hallucination_rate(ranked) == pytest.approx(row["har"])
            assert hallucination_rate(ranked, top=1) == pytest.approx(row["har_top1"])
        else:
            assert {k: again[k] for k in ("hr@10", "ndcg@10", "hr@1")} == pytest.approx(
                {k: row[k] for k in ("hr@10", "ndcg@10", "hr@1")}), method
        scores = np.stack(part["scores"])
        assert scores.shape == ranked.shape and (np.diff(scores[np.isfinite(scores).all(1)], axis=1) <= 1e-6).all()
    spans = json.loads((tmp_path / "eval" / "intervals.json").read_text())
    for method, span in spans.items():
        for metric, (low, high) in span.items():
            assert low <= rows[method][metric] <= high, (method, metric)
    assert spans["genrec"]["hr@10"][1] > spans["genrec"]["hr@10"][0]
    # GenRec minus each baseline on the same requests: the mean is the difference of the table's rows
    paired = json.loads((tmp_path / "eval" / "paired.json").read_text())["test"]
    assert set(paired) == {"genrec - popularity", "genrec - sasrec", "genrec - bert4rec"}
    for pair, diffs in paired.items():
        a, b = pair.split(" - ")
        for metric, (mean, low, high) in diffs.items():
            assert mean == pytest.approx(rows[a][metric] - rows[b][metric]) and low <= mean <= high, (pair, metric)
    assert "genrec - popularity: hr@1" in (tmp_path / "eval" / "metrics.md").read_text()
    # The baselines' epoch was chosen on the validation requests, which are scored too (for the gate).
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    # BERT4Rec (no patience) runs every epoch; SASRec (patience 3) stops 3 epochs after its best, or at its last.
    sel = report["baseline_selection"]["bert4rec"]
    assert len(sel["curve"]) == cfg.eval.bert4rec.epochs and sel["curve"][sel["epoch"] - 1] == max(sel["curve"])
    assert sel["valid_ndcg@10"] == pytest.approx(max(sel["curve"]), abs=1e-5)
    sel = report["baseline_selection"]["sasrec"]
    assert sel["epochs_run"] == len(sel["curve"]) == min(30, sel["epoch"] + 3)
    assert sel["curve"][sel["epoch"] - 1] == max(sel["curve"])
    valid = json.loads((tmp_path / "eval" / "metrics_valid.json").read_text())
    assert set(valid) == set(rows) and report["validation"]["requests"]["requests"] > 0
    other = tmp_path / "other_sids"
    other.mkdir()
    table = pq.read_table(sft_data / "sids" / "sid_table.parquet").to_pandas()
    table["s3"] = table["s3"].to_numpy()[::-1]  # same items and codes, other assignment
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), other / "sid_table.parquet")
    (other / "codebooks.npz").write_bytes((sft_data / "sids" / "codebooks.npz").read_bytes())
    with pytest.raises(InputDataError, match="trained on other semantic IDs"):
        run_evaluate(cfg, trained, sft_data / "pages", other, tmp_path / "eval2", "eval-test-2")


def test_two_processes_with_torchrun_zero3_and_streamed_pages(sft_data, tmp_path, mlflow_server):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "genrec.cli"]
    # with the item softmax: 4,096 x 32 rows, above ZeRO-3's persistence threshold (1e5), so the table is partitioned;
    # the pages streamed (the in-memory path runs on two processes in test_training_launch)
    run = subprocess.run(_cmd(sft_data, tmp_path / "ddp", mlflow_server, "sft.max_steps=30", "sft.zero_stage=3",
                              "model.item_embedding_buckets=4096", "sft.item_softmax_weight=0.5", "sft.data=stream",
                              "sft.loader_workers=1", "sft.target_types=[click]", launcher=launcher),
                         env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 30 and np.isfinite(report["final_loss"])
    # each process counted its own shard; the all-reduced counts are the split's (a process alone would see half)
    assert (report["stream_shards"], report["n_samples"]) == (2, 360)
    ds = json.loads((tmp_path / "ddp" / "ds_config.json").read_text())
    assert ds["train_batch_size"] == 16 and ds["zero_optimization"]["stage"] == 3
    weights = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    assert all(v.size > 0 for v in weights.values())  # gathered from the ZeRO-3 partitions, not empty shards

