"""What a benchmark trains on: real conversations through llama_hw's data pipeline, or synthetic token ids.

- `--data_path F --template T --tokenizer P`: the trainer's own pipeline (`llama_hw.data.build_sft_data`),
  so tokenization, loss masks, packing and collators are exactly those of `llama_hw.train`.
- no data: every sample is `--seq-len` random token ids, all of them trained (full rows, for MFU).
- `--lengths-from F`: random token ids with the lengths of F's tokenized conversations, drawn at random,
  the last `trained` tokens of each carrying labels (where a one-turn reply sits), so padding and packing
  behave as on the real data while any vocabulary size works.

`--padding`: max pads every row to `--seq-len` (FastChat's train.py), dynamic to the longest row of the
batch (llama_hw's default), packed fills rows of `--seq-len` with whole conversations kept apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from llama_hw.errors import UsageError

PADDINGS = ("max", "dynamic", "packed")
SYNTHETIC_PAD_ID = 0  # LLaMA's <unk>, which llama_hw's tokenizer loader also makes the pad token
FIRST_SYNTHETIC_ID = 3  # skip <unk>, <s>, </s>


@dataclass
class BenchData:
    dataset: object  # a datasets.Dataset of samples (or packed rows)
    collator: object
    description: str


def collator_for(padding: str, pad_token_id: int, seq_len: int):
    from llama_hw.data import make_collator

    return make_collator(padding, SimpleNamespace(pad_token_id=pad_token_id), seq_len)


def real_data(data_path: str, template: str, tokenizer, seq_len: int, padding: str) -> BenchData:
    """The trainer's pipeline: records read, validated, rendered, tokenized (cached), masked, packed."""
    from llama_hw.data import DataArguments, build_sft_data

    sft = build_sft_data(DataArguments(data_path=data_path, template=template, packing=padding == "packed"),
                         tokenizer, seq_len)  # fmt: skip
    collator = collator_for("max", tokenizer.pad_token_id, seq_len) if padding == "max" else sft.data_collator
    stats = sft.stats
    described = f"{data_path} ({template}): {stats.samples} samples, {stats.tokens} tokens"
    if stats.packed_rows:
        described += f", packed into {stats.packed_rows} rows"
    return BenchData(sft.train_dataset, collator, described)


def synthetic_samples(lengths: np.ndarray, trained: np.ndarray, vocab_size: int, seed: int):
    """A datasets.Dataset of random ids with the given lengths; the last `trained` tokens of each are labelled."""
    from datasets import Dataset

    if vocab_size <= FIRST_SYNTHETIC_ID:
        raise UsageError(f"--vocab {vocab_size} is too small for synthetic data (ids start at {FIRST_SYNTHETIC_ID})")
    rng = np.random.default_rng(seed)
    ids = rng.integers(FIRST_SYNTHETIC_ID, vocab_size, size=int(lengths.sum()), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rows, labels = [], []
    for start, end, count in zip(offsets[:-1], offsets[1:], trained):
        row = ids[start:end]
        label = row.copy()
        label[: len(row) - int(count)] = -100
        rows.append(row)
        labels.append(label)
    return Dataset.from_dict({"input_ids": rows, "labels": labels, "length": lengths.astype(np.int32)})


def fixed_length_data(samples: int, seq_len: int, vocab_size: int, seed: int, padding: str) -> BenchData:
    lengths = np.full(samples, seq_len, dtype=np.int64)
    dataset = synthetic_samples(lengths, lengths, vocab_size, seed)
    return BenchData(dataset, collator_for(padding, SYNTHETIC_PAD_ID, seq_len),
                     f"synthetic: {samples} samples of {seq_len} random tokens, all trained")  # fmt: skip


def lengths_like(source, samples_needed: int, seq_len: int, vocab_size: int, seed: int, padding: str) -> BenchData:
    """Synthetic samples whose lengths and trained counts are drawn from `source` (a tokenized SFT dataset)."""
    from llama_hw.data import pack_sequences

    table = source.with_format("numpy", columns=["length"])[:]
    lengths = np.asarray(table["length"], dtype=np.int64)
    trained = np.asarray([sum(1 for label in labels if label != -100) for labels in source["labels"]])
    rng = np.random.default_rng(seed)
    if padding == "packed":  # enough samples to fill the packed rows the run needs
        samples_needed = int(np.ceil(samples_needed * seq_len * 1.1 / lengths.mean()))
    chosen = rng.integers(0, len(lengths), size=samples_needed)
    dataset = synthetic_samples(lengths[chosen], trained[chosen], vocab_size, seed)
    if padding == "packed":
        dataset = pack_sequences(dataset, seq_len)
    described = (f"synthetic: {samples_needed} samples of random tokens with the lengths of {len(lengths)} real "
                 f"ones (mean {lengths.mean():.0f}, max {lengths.max()})")  # fmt: skip
    return BenchData(dataset, collator_for(padding, SYNTHETIC_PAD_ID, seq_len), described)
