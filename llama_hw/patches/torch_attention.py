"""Attention on CUDA and CPU: transformers' own implementations, chosen per device and dtype.

CUDA uses flash-attention 2 when the `flash_attn` package is installed and the model runs in fp16 or bf16
(the kernels have no fp32 path), else PyTorch's scaled_dot_product_attention; CPU uses sdpa. flash-attention
runs packed rows varlen (transformers hands `flash_attn_varlen_func` the cu_seq_lens of llama_hw's packed
collator, or derives them from restarting position_ids) and unpads padded rows; no 4-D mask is built.
transformers derives them from position_ids only for one flattened row (`_is_packed_sequence` needs batch
size 1): with several packed rows and no cu_seq_lens its flash path would let documents see each other, so
the patch hands flash-attention the cu_seq_lens of such rows itself.
sdpa alone computes packed and padded rows as dense masked rows: varlen_attention (varlen_attention.py)
splits them per document on top of it.
"""

from __future__ import annotations

import itertools

import torch

from llama_hw.patches.attention import set_attention_implementation
from llama_hw.patches.attention_segments import packed_lengths
from llama_hw.patches.base import Changes, Patch, PatchContext
from llama_hw.utils.imports import is_flash_attn_available

FLASH = "flash_attention_2"
HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_flash(ctx: PatchContext) -> str | None:
    if not is_flash_attn_available():
        return "flash_attn is not installed (pip install flash-attn)"
    if ctx.model is not None and ctx.model.dtype not in HALF_DTYPES:
        return f"the model is {ctx.model.dtype}; flash-attention 2 needs fp16 or bf16"
    return None


def check_sdpa(ctx: PatchContext) -> str | None:
    return f"{FLASH} is used instead" if FLASH in ctx.applied else None


def with_packed_row_boundaries(flash_forward):
    """transformers' flash_attention_forward, given cu_seq_lens for packed rows of a batch of several rows."""

    def flash_attention_forward(module, query, key, value, attention_mask, **kwargs):
        batch, _, length, _ = query.shape
        if attention_mask is None and batch > 1 and key.shape[2] == length and kwargs.get("cu_seq_lens_q") is None:
            lengths = packed_lengths(kwargs, batch, length)
            if lengths is not None:
                edges = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=query.device)
                kwargs.update(cu_seq_lens_q=edges, cu_seq_lens_k=edges, max_length_q=max(lengths),
                              max_length_k=max(lengths))  # fmt: skip
        return flash_forward(module, query, key, value, attention_mask, **kwargs)

    return flash_attention_forward


def apply_flash(ctx: PatchContext) -> Changes:
    from transformers import AttentionInterface

    changes = Changes()
    mapping = AttentionInterface._global_mapping
    changes.set_shared(mapping, FLASH, with_packed_row_boundaries(mapping[FLASH]))
    set_attention_implementation(changes, ctx.model, FLASH)
    return changes


def use(name: str):
    def apply(ctx: PatchContext) -> Changes:
        changes = Changes()
        set_attention_implementation(changes, ctx.model, name)
        return changes

    return apply


PATCHES = [
    Patch(
        name=FLASH,
        summary="flash-attention 2 kernels (fp16/bf16 models, flash_attn installed)",
        replaces="model attention implementation -> flash_attention_2 (packed rows varlen through cu_seq_lens / "
        "position_ids, padded rows unpadded: varlen)",
        scope="model", backends=("cuda",),
        check=check_flash, apply=apply_flash, order=40,
    ),
    Patch(
        name="sdpa_attention",
        summary="PyTorch scaled_dot_product_attention",
        replaces="model attention implementation -> sdpa (packed and padded rows dense rows: one masked call)",
        scope="model", backends=("cuda", "cpu"),
        check=check_sdpa, apply=use("sdpa"), order=45,
    ),
]  # fmt: skip
