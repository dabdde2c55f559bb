"""Variable-length attention on CPU and CUDA: each sequence attends only within itself, padding is never computed.

With a padding mask or packed rows, PyTorch's sdpa gets a dense [batch, 1, T, T] mask and computes every
query/key pair of the row: a 2048-token packed row of nine conversations costs as much as one 2048-token
conversation, and a padded row as much as if it were all text. Here the attention of a batch is split into
its sequences — per row for padded batches (the attended block of the 2D mask), per conversation for packed
rows (`cu_seq_lens_q` from llama_hw's packed collator, else the restarts of `position_ids`) — and each runs
through transformers' own sdpa with `is_causal`; padding outputs are zero (nothing reads them: their labels
are -100). Measured on bench-20m, packed alpaca rows: step 1.4x faster on CPU. The results equal masked
sdpa up to fp32 rounding (tests/test_bench_patches.py, tests/test_patches_varlen_cuda.py). A mask with
holes, a KV cache (query shorter than keys) or a 4D mask run stock sdpa with the dense mask.

Splitting a padded batch costs one kernel call per sequence, which only pays when it skips enough
query/key pairs: for many short rows (the embedded demo: 32 rows of about 60 tokens) the calls cost more
than the padding (measured: the demo's training took 57 s split, 45 s dense). On CPU a padded batch is split
only when the pairs it skips outweigh CALL_COST per call; a padded batch without padding runs as one causal
call. Packed rows are always split: without a mask their conversations would see each other.

CUDA without flash-attn (with it, flash_attention_2 runs packed and padded rows varlen itself): packed rows
run per document here. Per-document sdpa was picked over FlexAttention (transformers' `flex_attention`, a
document-causal BlockMask) by measurement on this project's CPU, the only device at hand: attention of one
packed 2048-token row of 8 documents, 8 heads x 64, fp32, one thread, forward, median of 15 interleaved
calls, two runs: compiled FlexAttention 0.168 / 0.115 s, per-document sdpa 0.101 / 0.072 s (1.66x / 1.60x
faster), dense masked sdpa 0.661 / 0.423 s (load average 11.5 / 7 on 2 shared cores: ratios only; torch 2.13);
FlexAttention has no backward on CPU at all ("FlexAttention does not support backward on CPU"), so it
cannot train there. Padded batches on CUDA keep one dense masked
call: CALL_COST is a CPU measurement and the CUDA launch cost against pair cost is not measured yet.

The mask builder registered with it is transformers' flash-attention one: it hands over the 2D padding
mask (or None) instead of building the dense 4D mask first.
"""

from __future__ import annotations

import torch

from llama_hw.patches.attention import (
    dense_mask,
    padding_mask_only,
    register_attention,
    set_attention_implementation,
)
from llama_hw.patches.attention_segments import packed_lengths
from llama_hw.patches.base import Changes, Patch, PatchContext

NAME = "sdpa_varlen"
# One sdpa call's fixed cost (forward and backward), in query/key pairs x heads x head size: on the 2-core
# Xeon here a call costs about 100 us and a pair-dimension about 4.4e-11 s (torch 2.13 CPU flash kernel).
CALL_COST = 2_000_000


def padded_rows(mask: torch.Tensor) -> tuple[list[int], list[bool]] | None:
    """Split sizes over the flattened [batch * T] positions and which pieces are attended, for a 2D mask
    whose ones form one block per row (right or left padding); None when a row has holes."""
    mask = mask.bool()
    blocks = mask[:, :1].int() + (mask[:, 1:] & ~mask[:, :-1]).sum(1, dtype=torch.int32)
    if bool((blocks > 1).any()):
        return None
    sizes: list[int] = []
    attended: list[bool] = []
    length = mask.shape[1]
    for first, count in zip(mask.int().argmax(1).tolist(), mask.sum(1).tolist()):
        first = first if count else length
        for size, real in ((first, False), (count, True), (length - first - count, False)):
            if size:
                sizes.append(size)
                attended.append(real)
    return sizes, attended


def splitting_pays(sizes: list[int], attended: list[bool], batch: int, length: int, heads: int, head_dim: int,
                   device_type: str = "cpu") -> bool:  # fmt: skip
    """Whether per-sequence calls beat one dense masked call for a padded batch (see CALL_COST; CPU only)."""
    if device_type != "cpu":
        return False
    skipped_pairs = batch * length * length - sum(size * size for size, real in zip(sizes, attended) if real)
    return skipped_pairs * heads * head_dim > CALL_COST * sum(attended)


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """An AttentionInterface function: query [B, H, T, D], key/value [B, H_kv, S, D] -> ([B, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, head_dim = query.shape
    kwargs.pop("is_causal", None)
    plan = None
    if key.shape[2] == length and getattr(module, "is_causal", True):
        if attention_mask is None:
            sizes = packed_lengths(kwargs, batch, length)
            plan = None if sizes is None else (sizes, [True] * len(sizes))
            if plan is None:
                return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                              **kwargs)  # fmt: skip
        elif attention_mask.dim() == 2:
            plan = padded_rows(attention_mask)
            if plan is not None and all(plan[1]):  # no padding: one causal call, no mask
                return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                              **kwargs)  # fmt: skip
            if plan is not None and not splitting_pays(*plan, batch, length, heads, head_dim, query.device.type):
                plan = None
    if plan is None:  # stock sdpa on the dense mask
        offset = key.shape[2] - length
        if attention_mask is None and offset and length > 1 and getattr(module, "is_causal", True):
            # New queries after a KV cache: sdpa's is_causal would line them up with the first keys.
            attention_mask = torch.ones(batch, key.shape[2], dtype=torch.bool, device=query.device)
        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = dense_mask(attention_mask, length)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    sizes, attended = plan

    def pieces(states: torch.Tensor):  # [B, h, T, D] -> per piece [1, h, n, D]; split's backward is one cat
        flat = states.transpose(1, 2).reshape(batch * length, states.shape[1], head_dim)
        return [piece.transpose(0, 1).unsqueeze(0) for piece in flat.split(sizes)]

    outputs = []
    for real, q, k, v in zip(attended, pieces(query), pieces(key), pieces(value)):
        if real:
            out, _ = sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True)
            outputs.append(out[0])
        else:
            outputs.append(query.new_zeros(q.shape[2], heads, head_dim))
    return torch.cat(outputs).view(batch, length, heads, head_dim), None


def check(ctx: PatchContext) -> str | None:
    if "flash_attention_2" in ctx.applied:
        return "flash_attention_2 runs packed and padded rows varlen itself (cu_seq_lens / position_ids)"
    if "sdpa_attention" not in ctx.applied:
        return "needs sdpa_attention (it builds on transformers' sdpa)"
    return None


def apply(ctx: PatchContext) -> Changes:
    changes = Changes()
    register_attention(changes, NAME, varlen_sdpa, padding_mask_only)
    set_attention_implementation(changes, ctx.model, NAME)
    return changes


PATCHES = [
    Patch(
        name="varlen_attention",
        summary="attention per sequence (padded rows, packed conversations): padding and cross-sequence pairs "
        "are never computed",
        replaces=f"model attention implementation -> {NAME} (packed rows varlen: transformers' sdpa per document, "
        "picked over FlexAttention by measurement; padded rows varlen on CPU where splitting pays, else dense rows)",
        scope="model", backends=("cpu", "cuda"), model_types=("llama",), modes=("train",),
        check=check, apply=apply, order=46,
    ),
]  # fmt: skip
