"""Training samples from pages: prompt = the page's history, target = the page's items (paper eq. 4).

Page-wise: one sample per page; the target is the page's items ordered by intensity (ordered, carted,
clicked, exposed-only; `target_types` chooses which groups), each item's SID tokens, <sep> between
items, <eos> at the end (sft.target_order=shuffled reorders the items per epoch at batch time:
shuffle_target_items). Point-wise (TIGER / LC-Rec): one sample per target item, target = that item.
The history comes from sessionization, which keeps only what happened before the page began (no
leakage); here it is only truncated to its last `max_history` items.

Encoded sample: ids (T, L) int64, is_item (T,) bool, labels (T,) int64 (-100 outside the target).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from genrec.model.vocab import SidMap, SidVocab

# Page columns by intensity, strongest first (as sessionization writes them).
GROUP_COLUMNS = {"order": "ordered_items", "cart": "carted_items", "click": "clicked_items", "expose": "exposed_items"}


@dataclass
class Sample:
    page_id: str
    user_id: int
    history: list[int]  # item ids, chronological, last max_history
    target: list[int]  # item ids, strongest intensity first


@dataclass
class SampleCounts:
    pages: int = 0
    samples: int = 0
    skipped_empty_history: int = 0
    skipped_empty_target: int = 0
    truncated_targets: int = 0
    extra: dict = field(default_factory=dict)


def page_items(page, types: list[str]) -> list[int]:
    """The page's items of the chosen groups, strongest group first, each once."""
    seen, out = set(), []
    for t in ("order", "cart", "click", "expose"):
        if t in types:
            for i in page[GROUP_COLUMNS[t]]:
                if int(i) not in seen:
                    seen.add(int(i))
                    out.append(int(i))
    return out


def build_samples(pages: pd.DataFrame, mode: str, target_types: list[str], max_history: int,
                  max_target_items: int) -> tuple[list[Sample], SampleCounts]:
    """Pages -> samples. Pages without history or without a target item are skipped and counted."""
    counts = SampleCounts(pages=len(pages))
    out: list[Sample] = []
    for page in pages.itertuples(index=False):
        page = page._asdict()
        history = [int(i) for i in page["history_items"]][-max_history:]
        target = page_items(page, target_types)
        if not history:
            counts.skipped_empty_history += 1
            continue
        if not target:
            counts.skipped_empty_target += 1
            continue
        if mode == "point":
            out.extend(Sample(page["page_id"], int(page["user_id"]), history, [i]) for i in target)
        else:
            if len(target) > max_target_items:
                counts.truncated_targets += 1
                target = target[:max_target_items]
            out.append(Sample(page["page_id"], int(page["user_id"]), history, target))
    counts.samples = len(out)
    return out, counts


def encode_prompt(history_codes: np.ndarray, vocab: SidVocab, token_merger: bool) -> tuple[np.ndarray, np.ndarray]:
    """<bos> history <sep>: (P, L) ids and (P,) is_item. Merged: one position per item; else L per item."""
    levels = vocab.levels
    tokens = vocab.code_tokens(history_codes)  # (n, L)
    special = lambda t: np.full((1, levels), t, dtype=np.int64)  # noqa: E731
    if token_merger:
        ids = np.concatenate([special(vocab.bos), tokens, special(vocab.sep)])
        is_item = np.concatenate([[False], np.ones(len(tokens), bool), [False]])
    else:
        # Each code its own position, whose token is column 0. The row holds the item's whole SID, rotated to put
        # that code first, so per-item input rows (model.item_embedding_buckets) can find the item; special and
        # target rows repeat their one token.
        flat = np.stack([np.roll(tokens, -j, axis=1) for j in range(levels)], axis=1).reshape(-1, levels)
        ids = np.concatenate([special(vocab.bos), flat, special(vocab.sep)])
        is_item = np.zeros(len(ids), bool)
    return ids, is_item


def encode_target(target_codes: np.ndarray, vocab: SidVocab) -> np.ndarray:
    """Item codes with <sep> between items and <eos> at the end: (n * (L + 1),) token ids."""
    tokens = vocab.code_tokens(target_codes)
    ends = np.full((len(tokens), 1), vocab.sep, dtype=np.int64)
    ends[-1, 0] = vocab.eos
    return np.concatenate([tokens, ends], axis=1).reshape(-1)


def join_prompt_target(p_ids: np.ndarray, p_item: np.ndarray, target: np.ndarray, levels: int):
    """An encoded prompt followed by target token ids: (ids (T, L), is_item (T,), labels (T,), -100 on the prompt)."""
    ids = np.concatenate([p_ids, np.repeat(target[:, None], levels, axis=1)])
    is_item = np.concatenate([p_item, np.zeros(len(target), bool)])
    labels = np.concatenate([np.full(len(p_ids), -100, dtype=np.int64), target])
    return ids, is_item, labels


def encode_sample(sample: Sample, sid_map: SidMap, vocab: SidVocab, token_merger: bool):
    """(ids (T, L), is_item (T,), labels (T,)) for one sample; unknown items raise naming the page."""
    p_ids, p_item = encode_prompt(sid_map.item_codes(sample.history, f"the history of page {sample.page_id}"), vocab,
                                  token_merger)
    target = encode_target(sid_map.item_codes(sample.target, f"the target of page {sample.page_id}"), vocab)
    return join_prompt_target(p_ids, p_item, target, vocab.levels)


def shuffle_target_items(encoded: tuple[np.ndarray, np.ndarray, np.ndarray], levels: int, rng: np.random.Generator):
    """The same encoded sample with its target items in a random order (each item's codes kept together, <sep>
    between items and <eos> last, as encode_target writes them)."""
    ids, is_item, labels = encoded
    start = int(np.argmax(labels != -100))
    blocks = labels[start:].reshape(-1, levels + 1)  # one row per item: its codes, then <sep> or <eos>
    codes = blocks[rng.permutation(len(blocks)), :levels]
    target = np.concatenate([codes, blocks[:, levels:]], axis=1).reshape(-1)
    return join_prompt_target(ids[:start], is_item[:start], target, levels)


def epoch_batch(encoded: list, keys: list[int], epoch: int, shuffle_seed: int | None, vocab: SidVocab) -> dict:
    """A micro-batch's tensors for `epoch`: with shuffle_seed (sft.target_order=shuffled), each sample's target items
    in an order drawn from (seed, epoch, the sample's key), so a resumed run sees the same orders; else as encoded.
    The key is anything stable that names the sample (its index in memory, a hash of its page in a stream)."""
    if shuffle_seed is not None:
        encoded = [shuffle_target_items(e, vocab.levels, np.random.default_rng([shuffle_seed, epoch, int(k)]))
                   for e, k in zip(encoded, keys)]
    return collate(encoded, vocab.pad)


def collate(encoded: list[tuple[np.ndarray, np.ndarray, np.ndarray]], pad: int):
    """Right-pad a list of encoded samples into a batch of tensors."""
    import torch

    length = max(len(e[0]) for e in encoded)
    levels = encoded[0][0].shape[1]
    ids = np.full((len(encoded), length, levels), pad, dtype=np.int64)
    is_item = np.zeros((len(encoded), length), bool)
    labels = np.full((len(encoded), length), -100, dtype=np.int64)
    mask = np.zeros((len(encoded), length), dtype=np.int64)
    for r, (i, f, lab) in enumerate(encoded):
        ids[r, :len(i)], is_item[r, :len(i)], labels[r, :len(i)], mask[r, :len(i)] = i, f, lab, 1
    return {"ids": torch.from_numpy(ids), "is_item": torch.from_numpy(is_item), "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(mask)}


def batch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, length_grouped: bool) -> list[np.ndarray]:
    """Sample indices per batch for one epoch; deterministic in (seed, epoch).

    Length-grouped: shuffle, cut into mega-batches of 50 batches, sort each by length, cut into batches,
    shuffle the batches: little padding, still random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if length_grouped:
        mega = 50 * batch_size
        order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                                for chunk in np.array_split(order, max(1, int(np.ceil(len(order) / mega))))])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if length_grouped else batches
