"""Counting the tokens of a batch three ways, and the attention work, on the device and without waiting for it.

- processed: every position the model computes, padding included (what the Ascend port's "tokens/s" counted);
- effective: positions holding real text (attention_mask, or for packed rows everything but the padding
  segment the packed collator appends: a trailing sequence without a single label);
- trained: positions whose next-token label is not -100 (what the loss is averaged over, and the rows the
  chunked head computes).

Attention is counted in query/key pairs two ways (see llama_hw/bench/work.py for the layouts):
- effective_squared: n^2 per real sequence (with `effective`, the causal pairs of the text: model FLOPs);
- attention_pairs: the pairs the kernel of the run's layout executes for this batch.
A sequence of length n at positions 0..n-1 has n^2 = sum of (2p + 1) and n(n+1)/2 = sum of (p + 1), so the
sums are token-wise and need no host copy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from llama_hw.bench.work import CPU_VARLEN, DENSE, NPU_TND, PER_SEQUENCE, SDPA, WorkLayout

IGNORE_INDEX = -100


@dataclass
class TokenCounts:
    processed: int = 0
    effective: int = 0
    trained: int = 0
    samples: int = 0  # sequences with real text: rows, or conversations in packed rows
    effective_squared: int = 0  # sum of squared lengths of the real sequences
    attention_pairs: int = 0  # query/key pairs the attention kernels computed

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_list(self) -> list[int]:
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def from_list(cls, values) -> TokenCounts:
        return cls(*(int(value) for value in values))


def count_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                layout: WorkLayout = WorkLayout()) -> torch.Tensor:  # fmt: skip
    """int64 tensor on the batch's device, in TokenCounts field order."""
    from llama_hw.patches.varlen_attention import CALL_COST

    batch, length = input_ids.shape
    device = input_ids.device
    columns = torch.arange(length, device=device).expand(batch, length)
    within = columns  # each position's index inside the sequence the attention sees
    attended = torch.ones_like(input_ids, dtype=torch.bool)  # positions a per-sequence kernel computes
    padded = packed = torch.zeros((), dtype=torch.bool, device=device)
    if attention_mask is not None and attention_mask.dim() == 2:
        real = attended = attention_mask.bool()
        padded = ~real.all()
        samples = real.any(1).sum()
        within = real_within = real.long().cumsum(1) - 1  # position inside its row's text (left or right padding)
    else:
        real = torch.ones_like(input_ids, dtype=torch.bool)
        samples = torch.tensor(batch, device=device)
        real_within = columns
        if position_ids is not None and position_ids.dim() == 2:
            positions = position_ids.expand(batch, length)
            starts = torch.ones_like(positions, dtype=torch.bool)
            starts[:, 1:] = positions[:, 1:] - positions[:, :-1] != 1
            start_index = torch.where(starts, columns, torch.zeros_like(columns)).cummax(1).values
            within = real_within = columns - start_index
            samples = starts.sum()
            packed = samples > batch
            if labels is not None:  # the packed collator's padding: a last sequence, of several, with no label
                tail = columns >= start_index[:, -1:]
                padding_tail = ~((labels != IGNORE_INDEX) & tail).any(1) & (starts.sum(1) > 1)
                real = ~(tail & padding_tail[:, None])
                samples = samples - padding_tail.sum()
    trained = (labels[:, 1:] != IGNORE_INDEX).sum() if labels is not None else torch.zeros((), device=device)
    zero = torch.zeros_like(columns)
    effective_squared = torch.where(real, 2 * real_within + 1, zero).sum()
    dense = torch.tensor(batch * length * length, device=device)
    causal_rows = torch.tensor(batch * length * (length + 1) // 2, device=device)
    per_sequence = torch.where(attended, within + 1, zero).sum()
    if layout.attention == DENSE:
        pairs = dense
    elif layout.attention == SDPA:
        pairs = torch.where(padded | packed, dense, causal_rows)
    elif layout.attention == CPU_VARLEN:  # a padded batch runs dense unless splitting it pays
        texts = attended.any(1).sum()
        pays = (dense - effective_squared) * layout.pair_dims > CALL_COST * texts
        pairs = torch.where(padded & ~pays, dense, per_sequence)
    elif layout.attention == NPU_TND:  # TND per document; left padding runs BNSD with the full mask
        right_padded = (columns < attended.sum(1, keepdim=True)).eq(attended).all()  # every row: text, then padding
        pairs = torch.where(right_padded, per_sequence, dense)
    elif layout.attention == PER_SEQUENCE:
        pairs = per_sequence
    else:
        raise ValueError(f"unknown attention layout {layout.attention!r}")
    return torch.stack([
        torch.tensor(input_ids.numel(), device=device),
        real.sum(),
        trained,
        samples,
        effective_squared,
        pairs,
    ]).to(torch.int64)  # fmt: skip


class TokenCounter:
    """A forward pre-hook on the model that adds every micro-batch's counts to a device-side total."""

    def __init__(self, layout: WorkLayout = WorkLayout()) -> None:
        self.layout = layout
        self.total: torch.Tensor | None = None
        self.handle = None

    def attach(self, model: torch.nn.Module) -> None:
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def hook(self, module, args, kwargs) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or not module.training:
            return
        counts = count_batch(input_ids, kwargs.get("attention_mask"), kwargs.get("position_ids"), kwargs.get("labels"),
                             self.layout)  # fmt: skip
        self.total = counts if self.total is None else self.total + counts

    def take(self) -> TokenCounts:
        """The counts since the last call (copies to the host: call it after the device is synchronized)."""
        if self.total is None:
            return TokenCounts()
        counts, self.total = TokenCounts.from_list(self.total.tolist()), None
        return counts
