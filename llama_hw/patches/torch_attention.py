"""Attention on CUDA and CPU: transformers' own implementations, chosen per device and dtype.

CUDA uses flash-attention 2 when the `flash_attn` package is installed and the model runs in fp16 or bf16
(the kernels have no fp32 path), else PyTorch's scaled_dot_product_attention; CPU uses sdpa.
"""

from __future__ import annotations

import torch

from llama_hw.patches.attention import set_attention_implementation
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
        replaces="model attention implementation -> flash_attention_2",
        scope="model", backends=("cuda",),
        check=check_flash, apply=use(FLASH), order=40,
    ),
    Patch(
        name="sdpa_attention",
        summary="PyTorch scaled_dot_product_attention",
        replaces="model attention implementation -> sdpa",
        scope="model", backends=("cuda", "cpu"),
        check=check_sdpa, apply=use("sdpa"), order=45,
    ),
]  # fmt: skip
