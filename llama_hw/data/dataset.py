"""Tokenize validated records into a `datasets.Dataset` (eager, parallel) or a lazy torch Dataset.

Eager rows: `input_ids`, `labels`, `length` (what transformers' length-grouped sampler reads) and
`record` (the record's position in the data, for `inspect`). Samples left without a trainable token
after truncation are dropped here and counted in the statistics.
"""

from __future__ import annotations

import numpy as np
import torch

from llama_hw.data.encode import encode_conversations
from llama_hw.data.formats import Records
from llama_hw.data.stats import DataStats
from llama_hw.data.templates import Template

MAP_BATCH_SIZE = 1000


def tokenize_records(
    records: Records,
    tokenizer,
    template: Template,
    max_length: int,
    num_proc: int | None = None,
    fingerprint: str | None = None,
) -> tuple[object, DataStats]:
    """Tokenize every record; returns (datasets.Dataset of kept samples, statistics).

    `fingerprint` (the cache key) spares `datasets` from hashing the tokenizer to name the result.
    """
    from datasets import Dataset, Features, Sequence, Value

    raw = Dataset.from_dict(
        {
            "roles": [[role for role, _ in turns] for turns in records.conversations],
            "contents": [[content for _, content in turns] for turns in records.conversations],
            "record": list(range(len(records))),
        }
    )
    token_list = Sequence(Value("int32"))
    features = Features(
        {
            "record": Value("int64"),
            "input_ids": token_list,
            "labels": token_list,
            "length": Value("int32"),
            "full_length": Value("int32"),
            "num_trained": Value("int32"),
        }
    )
    # One process by default: the Rust tokenizer already encodes each batch on every core; more
    # processes help when rendering (Python) dominates, on very large data sets.
    parallel = num_proc if num_proc and num_proc > 1 and len(raw) > num_proc * MAP_BATCH_SIZE else None
    encoded = raw.map(
        _encode_batch,
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        num_proc=parallel,
        remove_columns=["roles", "contents"],
        features=features,
        fn_kwargs={"tokenizer": tokenizer, "template": template, "max_length": max_length},
        new_fingerprint=fingerprint,
        desc="Tokenizing conversations",
    )
    columns = encoded.with_format("numpy", columns=["length", "full_length", "num_trained"])[:]
    stats = DataStats.from_arrays(
        len(records), records.skipped, columns["length"], columns["full_length"], columns["num_trained"]
    )
    kept = encoded.select(np.flatnonzero(columns["num_trained"] > 0))
    return kept.remove_columns(["full_length", "num_trained"]), stats


def _encode_batch(batch: dict, tokenizer, template: Template, max_length: int) -> dict:
    conversations = [list(zip(roles, contents)) for roles, contents in zip(batch["roles"], batch["contents"])]
    encoded = encode_conversations(conversations, tokenizer, template, max_length)
    return {
        "record": batch["record"],
        "input_ids": [e.input_ids for e in encoded],
        "labels": [e.labels for e in encoded],
        "length": [len(e.input_ids) for e in encoded],
        "full_length": [e.full_length for e in encoded],
        "num_trained": [e.num_trained for e in encoded],
    }


class LazySFTDataset(torch.utils.data.Dataset):
    """FastChat's --lazy_preprocess: render and tokenize a record when it is first read, then memoize.

    Nothing is tokenized up front, so a record whose replies lie past model_max_length is only found
    when read: it comes back with `num_trained == 0`, and `DropUntrainable` removes it from its batch.
    """

    def __init__(self, records: Records, tokenizer, template: Template, max_length: int):
        self.conversations = records.conversations
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length
        self._memo: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict:
        if index not in self._memo:
            (encoded,) = encode_conversations(
                [self.conversations[index]], self.tokenizer, self.template, self.max_length
            )
            self._memo[index] = {
                "input_ids": encoded.input_ids,
                "labels": encoded.labels,
                "record": index,
                "num_trained": encoded.num_trained,
            }
        return self._memo[index]
