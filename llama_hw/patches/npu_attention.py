"""Ascend attention for LLaMA: `npu_fusion_attention` on Atlas A2/A3, else fused softmax (910A).

Both are transformers attention functions registered with `AttentionInterface` and `AttentionMaskInterface`
under their own names (see attention.py), so padding, packed sequences and KV-cache offsets reach them.
They take q/k/v as transformers passes them (BNSD, k/v with the key-value heads) and return [B, S, N, D]
like `sdpa_attention_forward`.

- npu_fusion_attention: one fused kernel, GQA native, registered with transformers' flash-attention mask
  builder (the 2-D padding mask, None without padding), so no S x S mask is built for packed or padded rows:
  - varlen: packed rows (documents from `cu_seq_lens_q`, else restarting `position_ids`) and right-padded
    rows (padding dropped) run in the TND layout, each document causal on its own: `actual_seq_qlen` /
    `actual_seq_kvlen` are the cumulative ends without a leading 0 (the last is T), and `sparse_mode=3`
    with the compressed 2048x2048 mask, as the op documentation states for variable-length causal
    attention (transformers' `npu_flash_attn_varlen_func` calls it the same way). Padding outputs are 0.
    `actual_seq_qlen` takes at most 1K entries: more documents run as several calls of at most 1K each
    (documents are independent, so the groups' outputs are simply concatenated).
  - dense rows, BNSD: left padding and KV-cache steps with padding take sparse_mode 0 with the full mask
    (torch_npu masks where True, transformers' mask attends where True, hence `~mask`); plain causal and
    chunks after a KV cache take sparse_mode 3 (rightDownCausal: new queries line up with the last keys;
    top-left when there is no cache) with the compressed mask; a one-token query takes no mask.
  The scale is passed explicitly: the op's default is 1.0, not 1/sqrt(d).
- npu_fused_softmax: eager attention whose softmax is `npu_scaled_masked_softmax`. Its kernel takes only
  last two dims in 32..4096 and divisible by 32, so each call checks and otherwise runs the plain softmax:
  the same patched model decodes with a KV cache (q_len = 1) without a second modeling file.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from llama_hw.patches.attention import (
    dense_mask,
    materialised_attend_mask,
    padding_mask_only,
    register_attention,
    set_attention_implementation,
)
from llama_hw.patches.attention_segments import from_tokens, packed_lengths, right_padded_lengths, to_tokens
from llama_hw.patches.base import Changes, Patch, PatchContext

FUSION = "npu_fusion_attention"
FUSED_SOFTMAX = "npu_fused_softmax"
COMPRESSED_MASK_SIZE = 2048
MAX_VARLEN_DOCUMENTS = 1024  # actual_seq_qlen holds at most 1K entries in the varlen scenario (op docs)
_compressed_masks: dict[torch.device, torch.Tensor] = {}


def compressed_causal_mask(device: torch.device) -> torch.Tensor:
    """The triu(ones(2048, 2048), 1) mask that sparse_mode 2/3 expect, one per device."""
    if device not in _compressed_masks:
        ones = torch.ones(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE, dtype=torch.bool, device=device)
        _compressed_masks[device] = torch.triu(ones, diagonal=1)
    return _compressed_masks[device]


def same_dtype(query, key, value):
    """q, k, v in one dtype, as the kernel requires: the autocast dtype when autocast is on (what sdpa would
    compute in; rotary embedding may have promoted q and k to float32), else their common promotion."""
    if query.dtype == key.dtype == value.dtype:
        return query, key, value
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def varlen_layout(attention_mask, kwargs: dict, batch: int, length: int):
    """(document lengths, kept flat token indices or None) when the batch runs per document in TND: packed rows
    (no mask) or right padding; None for dense rows (left padding, a 4-D mask)."""
    keep = None
    if attention_mask is None:
        lengths = packed_lengths(kwargs, batch, length)
    elif attention_mask.dim() == 2:
        lengths = right_padded_lengths(attention_mask)
        if lengths is not None:
            keep = attention_mask.reshape(-1).nonzero().squeeze(1)
            lengths = [size for size in lengths if size]  # an all-padding row is no document
    else:
        return None
    if not lengths:
        return None
    return lengths, keep


def document_groups(lengths: list[int]) -> list[list[int]]:
    """`lengths` in consecutive groups of at most MAX_VARLEN_DOCUMENTS: one TND call each."""
    return [lengths[start : start + MAX_VARLEN_DOCUMENTS] for start in range(0, len(lengths), MAX_VARLEN_DOCUMENTS)]


def fusion_attention(torch_npu):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def npu_fusion_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                     is_causal=None, **kwargs):  # fmt: skip
        if attention_mask is not None and attention_mask.dtype != torch.bool and attention_mask.dim() == 4:
            # A float 4-D mask handed in by the caller bypasses the mask interface; sdpa reads it as is.
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
                **kwargs,
            )  # fmt: skip
        query, key, value = same_dtype(query, key, value)
        is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        batch, heads, length, _ = query.shape
        common = {"scale": scaling if scaling is not None else query.shape[-1] ** -0.5, "keep_prob": 1.0 - dropout}
        layout = varlen_layout(attention_mask, kwargs, batch, length) if is_causal and key.shape[2] == length else None
        if layout is not None:
            lengths, keep = layout
            tokens = to_tokens(query, keep), to_tokens(key, keep), to_tokens(value, keep)
            outputs, start = [], 0
            for group in document_groups(lengths):
                ends = list(itertools.accumulate(group))  # cumulative ends without a leading 0, the last = T
                group_tokens = (states[start : start + ends[-1]] for states in tokens)
                outputs.append(torch_npu.npu_fusion_attention(
                    *group_tokens, heads, "TND", atten_mask=compressed_causal_mask(query.device), sparse_mode=3,
                    actual_seq_qlen=ends, actual_seq_kvlen=ends, **common,
                )[0])  # fmt: skip
                start += ends[-1]
            output = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
            return from_tokens(output, keep, batch, length), None
        mask_arguments = {}
        if attention_mask is not None:
            if attention_mask.dim() == 2:  # left padding, or padding with a KV cache
                attention_mask = dense_mask(attention_mask, length, causal=is_causal)
            mask_arguments = {"atten_mask": ~(attention_mask.bool()), "sparse_mode": 0}
        elif length > 1 and is_causal:
            # rightDownCausal: after a KV cache the new queries line up with the last keys (top-left without one)
            mask_arguments = {"atten_mask": compressed_causal_mask(query.device), "sparse_mode": 3}
        output = torch_npu.npu_fusion_attention(query, key, value, heads, "BNSD", **common, **mask_arguments)[0]
        return output.transpose(1, 2).contiguous(), None

    return npu_fusion_attention_forward


def fits_scaled_masked_softmax(scores: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
    """The kernel's documented limits: 4-D scores, last two dims in 32..4096 and multiples of 32, bool mask."""
    if scores.dim() != 4 or not all(32 <= size <= 4096 and size % 32 == 0 for size in scores.shape[-2:]):
        return False
    return attention_mask is None or (
        attention_mask.dtype == torch.bool and attention_mask.dim() == 4
        and attention_mask.shape[-2:] == scores.shape[-2:]
    )  # fmt: skip


def plain_softmax(weights: torch.Tensor, attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """transformers' eager softmax: masked positions at the dtype's minimum, softmax in float32."""
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask
    return torch.softmax(weights, dim=-1, dtype=torch.float32).to(dtype)


def fused_softmax_attention(torch_npu):
    def npu_fused_softmax_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                            **kwargs):  # fmt: skip
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        groups = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        scores = torch.matmul(query, key.transpose(2, 3))
        if fits_scaled_masked_softmax(scores, attention_mask):
            if attention_mask is None:
                masked_out = torch.zeros((1, 1, *scores.shape[-2:]), dtype=torch.bool, device=scores.device)
            else:
                masked_out = ~attention_mask
            probs = torch_npu.npu_scaled_masked_softmax(scores, masked_out, scale, False)
        else:
            probs = plain_softmax(scores * scale, attention_mask, query.dtype)
        probs = F.dropout(probs, p=dropout, training=module.training)
        output = torch.matmul(probs, value)
        return output.transpose(1, 2).contiguous(), probs

    return npu_fused_softmax_attention_forward


def check_fusion(ctx: PatchContext) -> str | None:
    if ctx.npu_generation() != "910B":
        return f"needs Atlas A2/A3 (Ascend910B, 910_93); this is {ctx.backend.device_name()}"
    if not hasattr(ctx.torch_npu(), "npu_fusion_attention"):
        return "this torch_npu has no npu_fusion_attention"
    head_dim = ctx.head_dim()
    if head_dim is not None and not 1 <= head_dim <= 768:
        return f"head size {head_dim} is outside npu_fusion_attention's 1..768"
    return None


def check_fused_softmax(ctx: PatchContext) -> str | None:
    if FUSION in ctx.applied:
        return f"{FUSION} is used instead"
    if not hasattr(ctx.torch_npu(), "npu_scaled_masked_softmax"):
        return "this torch_npu has no npu_scaled_masked_softmax"
    return None


def apply_fusion(ctx: PatchContext) -> Changes:
    changes = Changes()
    register_attention(changes, FUSION, fusion_attention(ctx.torch_npu()), padding_mask_only)
    set_attention_implementation(changes, ctx.model, FUSION)
    return changes


def apply_fused_softmax(ctx: PatchContext) -> Changes:
    changes = Changes()
    register_attention(changes, FUSED_SOFTMAX, fused_softmax_attention(ctx.torch_npu()), materialised_attend_mask)
    set_attention_implementation(changes, ctx.model, FUSED_SOFTMAX)
    return changes


PATCHES = [
    Patch(
        name=FUSION,
        summary="attention as one torch_npu.npu_fusion_attention kernel (padding, packing, GQA, KV cache)",
        replaces="model attention implementation -> npu_fusion_attention (packed and right-padded rows varlen: "
        "TND per document; left padding and KV-cache decoding dense rows: BNSD)",
        scope="model", backends=("npu",), model_types=("llama",),
        check=check_fusion, apply=apply_fusion, order=40,
    ),
    Patch(
        name=FUSED_SOFTMAX,
        summary="eager attention with torch_npu.npu_scaled_masked_softmax where its shape limits allow (910A)",
        replaces="model attention implementation -> eager + npu_scaled_masked_softmax",
        scope="model", backends=("npu",), model_types=("llama",),
        check=check_fused_softmax, apply=apply_fused_softmax, order=45,
    ),
]  # fmt: skip
