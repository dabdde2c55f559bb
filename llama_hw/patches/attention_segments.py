"""Where the sequences of a batch are, for attention that runs per sequence ("varlen") instead of dense rows.

Packed rows carry their document boundaries as `cu_seq_lens_q` / `cu_seq_lens_k` (llama_hw's packed
collator, transformers' flash-attention kwargs) or as `position_ids` that restart at 0; padded batches carry
a 2-D attention mask. These helpers turn either into document lengths over the flattened [batch * T]
tokens, and move q/k/v between the padded [B, N, S, D] layout and the packed [T, N, D] one.
"""

from __future__ import annotations

import weakref

import torch


_last_lengths: list = [None, None, None]  # (weak reference to the boundary tensor, its key, the lengths)


def packed_lengths(kwargs: dict, batch: int, length: int) -> list[int] | None:
    """Document lengths of packed rows over the flattened [batch * length] tokens: from `cu_seq_lens_q`, else
    where `position_ids` restart; None when the rows are not packed (one sequence per row).

    Every layer of one forward asks with the same tensor: the answer is kept for it, so that an accelerator
    waits for the lengths on the host once per forward, not once per layer."""
    source = kwargs.get("cu_seq_lens_q")
    source = source if source is not None else kwargs.get("position_ids")
    if source is None:
        return None
    if source.is_inference():  # no version counter to tell an in-place change: computed each time
        return _packed_lengths(kwargs, batch, length)
    key = (source._version, batch, length, kwargs.get("cu_seq_lens_k") is not None)
    holder, last_key, lengths = _last_lengths
    if holder is not None and holder() is source and last_key == key:
        return lengths
    lengths = _packed_lengths(kwargs, batch, length)
    _last_lengths[:] = [weakref.ref(source), key, lengths]
    return lengths


def _packed_lengths(kwargs: dict, batch: int, length: int) -> list[int] | None:
    boundaries = kwargs.get("cu_seq_lens_q")
    if boundaries is not None and kwargs.get("cu_seq_lens_k") is not None:
        if not torch.equal(boundaries, kwargs["cu_seq_lens_k"]):
            return None
        edges = boundaries.tolist()
        if edges[0] != 0 or edges[-1] != batch * length:
            return None
        return [end - start for start, end in zip(edges[:-1], edges[1:])]
    positions = kwargs.get("position_ids")
    if positions is None or positions.dim() != 2:
        return None
    positions = positions.expand(batch, -1)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] - positions[:, :-1] != 1
    if int(starts.sum()) == batch:
        return None  # one sequence per row: plain causal attention
    edges = starts.reshape(-1).nonzero().squeeze(1).tolist() + [batch * length]
    return [end - start for start, end in zip(edges[:-1], edges[1:])]


def right_padded_lengths(mask: torch.Tensor) -> list[int] | None:
    """Each row's token count when every row of the 2-D mask is ones then zeros (right padding), else None."""
    mask = mask.bool()
    counts = mask.sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < counts[:, None]
    return counts.tolist() if torch.equal(prefix, mask) else None


def to_tokens(states: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """[B, N, S, D] -> [T, N, D]: the rows concatenated, keeping only the positions `keep` (flat indices)."""
    batch, heads, length, head_dim = states.shape
    flat = states.transpose(1, 2).reshape(batch * length, heads, head_dim)
    return flat if keep is None else flat.index_select(0, keep)


def from_tokens(tokens: torch.Tensor, keep: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
    """[T, N, D] -> [B, S, N, D], zeros where `keep` left padding out (nothing reads it: its labels are -100)."""
    if keep is not None:
        tokens = tokens.new_zeros(batch * length, *tokens.shape[1:]).index_copy(0, keep, tokens)
    return tokens.view(batch, length, *tokens.shape[1:])
