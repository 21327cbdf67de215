"""train-sft's stream on real parquet: the counting pass agrees with building every sample in memory, an epoch
reads each sample at most once, and a resumed read through a real DataLoader with workers gives the rest of the
epoch exactly."""

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from genrec.config import load_config
from genrec.data.io import read_split_pages
from genrec.errors import ConfigError
from genrec.model.samples import build_samples, encode_sample
from genrec.model.vocab import SidMap, SidVocab
from genrec.train.sft_stream import StreamSpec, sft_stream


@pytest.fixture(scope="module")
def stream_pages(sft_data, tmp_path_factory):
    """sft_data's pages as validate-pages writes them (split=... folders), in two part files of row groups of 30."""
    root = tmp_path_factory.mktemp("streampages")
    table = pq.read_table(sft_data / "pages" / "pages" / "part-0.parquet")
    for split in ("train", "valid", "test"):
        rows = table.filter(pa.compute.equal(table.column("split"), split)).drop_columns(["split"])
        folder = root / "pages" / f"split={split}"
        folder.mkdir(parents=True)
        half = rows.num_rows // 2
        pq.write_table(rows.slice(0, half), folder / "part-0.parquet", row_group_size=30)
        pq.write_table(rows.slice(half), folder / "part-1.parquet", row_group_size=30)
    return root


def _stream(stream_pages, sft_data, workers=0, micro_batch=4, *overrides):
    cfg = load_config(None, ["sft.target_types=[click]", "sft.target_order=shuffled", *overrides])
    sid_map = SidMap.load(sft_data / "sids")
    spec = StreamSpec(micro_batch=micro_batch, workers=workers, buffer=16, window=3, seed=5)
    return sft_stream(cfg, stream_pages, sid_map, SidVocab(sid_map.sizes), spec, 0, 1, torch.device("cpu")), cfg


def _rows(batch: dict) -> list[bytes]:
    """Each sample of a micro-batch as bytes of its unpadded ids and labels (to compare and count samples)."""
    out = []
    for ids, mask, labels in zip(batch["ids"], batch["attention_mask"], batch["labels"]):
        n = int(mask.sum())
        out.append(ids[:n].numpy().tobytes() + labels[:n].numpy().tobytes())
    return out


def test_the_counting_pass_agrees_with_the_samples_built_in_memory(stream_pages, sft_data):
    (batches, report), cfg = _stream(stream_pages, sft_data)
    pages = read_split_pages(stream_pages, "train")
    samples, counts = build_samples(pages, "page", ["click"], cfg.model.max_history, cfg.sft.max_target_items)
    assert (report["n_pages"], report["n_samples"]) == (counts.pages, len(samples)) == (400, 360)
    assert report["skipped_empty_history"] == counts.skipped_empty_history
    assert report["stream_row_groups"] == 14 and report["stream_shards"] == 1
    assert batches.per_epoch == len(samples) // 4
    epoch = [row for batch in batches.read(0, 0) for row in _rows(batch)]
    # 360 samples, 90 micro-batches of 4: an epoch reads every sample once (some samples of this walk are equal)
    sid_map = SidMap.load(sft_data / "sids")
    built = [encode_sample(x, sid_map, SidVocab(sid_map.sizes), cfg.model.token_merger) for x in samples]
    assert Counter(epoch) == Counter(ids.tobytes() + labels.tobytes() for ids, _, labels in built)
    assert epoch != [row for batch in batches.read(1, 0) for row in _rows(batch)]  # another order next epoch


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_read_gives_the_rest_of_the_epoch(stream_pages, sft_data, workers):
    (batches, report), _ = _stream(stream_pages, sft_data, workers)
    assert report["stream_shards"] == max(workers, 1)
    whole = [_rows(b) for b in batches.read(2, 0)]
    assert len(whole) == batches.per_epoch
    for skip in (1, 2, 5):
        assert [_rows(b) for b in batches.read(2, skip)] == whole[skip:]


def test_a_shard_too_small_for_one_micro_batch_is_named(stream_pages, sft_data):
    with pytest.raises(ConfigError, match="fewer than one micro-batch of 500.*lower sft.micro_batch_size"):
        _stream(stream_pages, sft_data, 0, 500)
