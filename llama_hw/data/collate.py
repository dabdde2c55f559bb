"""Batch collators: FastChat's pad-to-max, dynamic padding, and packed rows.

- "max": every row padded to model_max_length, as FastChat's train.py does (the baseline to beat).
- "dynamic": rows padded to the longest sample of the batch (optionally to a multiple of 8 for tensor
  cores); `attention_mask` hides the padding, so a sample's loss does not depend on its batch.
- "packed": rows from `pack_sequences`, padded to the longest row with a dummy segment; no
  `attention_mask`, so transformers derives per-sample attention from the restarting `position_ids`
  (masking_utils' packed-sequence detection for sdpa / eager), and `cu_seq_lens_*` / `max_length_*`
  let flash-attention varlen kernels do the same without a mask.

Padding uses torch directly: `DataCollatorForSeq2Seq` would route every batch through `tokenizer.pad`
and forward extra columns (`length`, `record`) to the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from llama_hw.data.encode import IGNORE_INDEX
from llama_hw.errors import DataError, UsageError

STRATEGIES = ("max", "dynamic", "packed")


def _round_up(length: int, multiple: int | None) -> int:
    return length if not multiple else -(-length // multiple) * multiple


def _tensor(values) -> torch.Tensor:
    return values.to(torch.long) if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=torch.long)


class PaddingCollator:
    """Right-pad input_ids (pad id), labels (-100) and attention_mask (0) to one length per batch."""

    def __init__(self, pad_token_id: int, pad_to: int | None = None, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.pad_to, self.pad_to_multiple_of = pad_token_id, pad_to, pad_to_multiple_of

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        ids = [_tensor(f["input_ids"]) for f in features]
        labels = [_tensor(f["labels"]) for f in features]
        longest = max(len(row) for row in ids)
        length = _round_up(self.pad_to or longest, self.pad_to_multiple_of)
        if length < longest:
            raise ValueError(f"a sample has {longest} tokens, more than the padded length {length}")
        batch = {
            "input_ids": torch.full((len(ids), length), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(ids), length), dtype=torch.long),
            "labels": torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long),
        }
        for row, (row_ids, row_labels) in enumerate(zip(ids, labels)):
            batch["input_ids"][row, : len(row_ids)] = row_ids
            batch["attention_mask"][row, : len(row_ids)] = 1
            batch["labels"][row, : len(row_labels)] = row_labels
        return batch


class PackedCollator:
    """Batch packed rows (see module docstring); a plain sample is a row holding one sequence."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, features: Sequence[dict]) -> dict:
        ids = [_tensor(f["input_ids"]) for f in features]
        length = _round_up(max(len(row) for row in ids), self.pad_to_multiple_of)
        input_ids = torch.full((len(ids), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long)
        # Padding continues as one more sequence (positions 0, 1, ...): it attends only to itself.
        position_ids = torch.arange(length).repeat(len(ids), 1)
        for row, (feature, row_ids) in enumerate(zip(features, ids)):
            used = len(row_ids)
            input_ids[row, :used] = row_ids
            labels[row, :used] = _tensor(feature["labels"])
            if "position_ids" in feature:
                position_ids[row, :used] = _tensor(feature["position_ids"])
            position_ids[row, used:] = torch.arange(length - used)
        starts = (position_ids.reshape(-1) == 0).nonzero().reshape(-1)
        cu_seq_lens = torch.cat([starts, torch.tensor([position_ids.numel()])]).to(torch.int32)
        max_length = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max_length,
            "max_length_k": max_length,
            # A KV cache turns off transformers' packed-sequence detection; training never needs one.
            "use_cache": False,
        }


class DropUntrainable:
    """For lazy datasets: remove samples that ended up with no trainable token before collating."""

    def __init__(self, collator: Callable):
        self.collator = collator

    def __call__(self, features: Sequence[dict]) -> dict:
        kept = [f for f in features if any(label != IGNORE_INDEX for label in f["labels"])]
        if not kept:
            records = [f.get("record") for f in features]
            raise DataError(
                f"records {records} have no trainable token within model_max_length (their assistant replies "
                "start after it): raise --model_max_length, or drop --lazy_preprocess so such records are "
                "dropped before training"
            )
        return self.collator(kept)


def make_collator(
    strategy: str, tokenizer, model_max_length: int, pad_to_multiple_of: int | None = None
) -> Callable[[Sequence[dict]], dict]:
    """A collator for "max" (FastChat's pad-to-max), "dynamic" or "packed" (rows from pack_sequences)."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise UsageError("the tokenizer has no pad token; load it with llama_hw.data.load_tokenizer")
    if strategy == "max":
        return PaddingCollator(pad_id, pad_to=model_max_length, pad_to_multiple_of=pad_to_multiple_of)
    if strategy == "dynamic":
        return PaddingCollator(pad_id, pad_to_multiple_of=pad_to_multiple_of)
    if strategy == "packed":
        return PackedCollator(pad_id, pad_to_multiple_of=pad_to_multiple_of)
    raise UsageError(f"unknown padding strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
