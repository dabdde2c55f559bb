"""Ascend attention for LLaMA: `npu_fusion_attention` on Atlas A2/A3, else fused softmax (910A).

Both are transformers attention functions registered with `AttentionInterface` and `AttentionMaskInterface`
under their own names, so padding, packed sequences and KV-cache offsets reach them as a boolean mask
(see attention.py). They take q/k/v as transformers passes them (BNSD, k/v with the key-value heads) and
return [B, S, N, D] like `sdpa_attention_forward`.

- npu_fusion_attention: one fused kernel, GQA native. With a mask: sparse_mode 0 with the full mask
  (torch_npu masks where True, transformers' mask attends where True, hence `~mask`). Without one:
  plain causal for q_len > 1, mapped to sparse_mode 2 (top-left aligned, exactly sdpa's `is_causal`,
  which is what transformers' mask skip guarantees) with the compressed 2048x2048 mask; nothing for q_len 1.
  The scale is passed explicitly: the op's default is 1.0, not 1/sqrt(d).
- npu_fused_softmax: eager attention whose softmax is `npu_scaled_masked_softmax`. Its kernel takes only
  last two dims in 32..4096 and divisible by 32, so each call checks and otherwise runs the plain softmax:
  the same patched model decodes with a KV cache (q_len = 1) without a second modeling file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llama_hw.patches.attention import (
    attend_mask,
    materialised_attend_mask,
    register_attention,
    set_attention_implementation,
)
from llama_hw.patches.base import Changes, Patch, PatchContext

FUSION = "npu_fusion_attention"
FUSED_SOFTMAX = "npu_fused_softmax"
COMPRESSED_MASK_SIZE = 2048
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


def fusion_attention(torch_npu):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def npu_fusion_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                     is_causal=None, **kwargs):  # fmt: skip
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            # A float 4-D mask handed in by the caller bypasses the mask interface; sdpa reads it as is.
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
                **kwargs,
            )  # fmt: skip
        query, key, value = same_dtype(query, key, value)
        is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        mask_arguments = {}
        if attention_mask is not None:
            mask_arguments = {"atten_mask": ~attention_mask, "sparse_mode": 0}
        elif query.shape[2] > 1 and is_causal:
            mask_arguments = {"atten_mask": compressed_causal_mask(query.device), "sparse_mode": 2}
        output = torch_npu.npu_fusion_attention(
            query, key, value, query.shape[1], "BNSD",
            scale=scaling if scaling is not None else query.shape[-1] ** -0.5,
            keep_prob=1.0 - dropout,
            **mask_arguments,
        )[0]  # fmt: skip
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
    register_attention(changes, FUSION, fusion_attention(ctx.torch_npu()), attend_mask)
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
        replaces="model attention implementation -> npu_fusion_attention",
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
