"""DeepSpeed's accelerator named by the backend, so that DeepSpeed never guesses.

Without DS_ACCELERATOR, DeepSpeed picks its accelerator the first time anything asks for it: CUDA when
torch sees a GPU, else CPU with the warning "Setting accelerator to CPU. If you have GPU or other
accelerator, we were unable to detect it." Every single-process CPU run printed it, though nothing is
undetected: the backend was chosen before DeepSpeed was imported. DS_ACCELERATOR is DeepSpeed's
documented override; child processes inherit it, and a value the user set is kept. The Ascend variant
(`deepspeed_npu_accelerator`, DeepSpeed >= 0.10.1 only) lives in npu_runtime.py and shares these functions.
"""

from __future__ import annotations

import os

from llama_hw.patches.base import Changes, Patch, PatchContext

ENV = "DS_ACCELERATOR"


def check_accelerator(ctx: PatchContext) -> str | None:
    current = os.environ.get(ENV)
    if current and current != ctx.backend.deepspeed_accelerator:
        return f"{ENV}={current} is set by the user and kept"
    return None


def apply_accelerator(ctx: PatchContext) -> Changes:
    changes = Changes()
    changes.setenv(ENV, ctx.backend.deepspeed_accelerator)
    return changes


PATCHES = [
    Patch(
        name="deepspeed_accelerator",
        summary="name DeepSpeed's accelerator after the backend instead of letting DeepSpeed detect (and warn)",
        replaces="DS_ACCELERATOR (auto-detection) -> the backend's accelerator",
        scope="process", backends=("cpu", "cuda"), requires=("deepspeed",),
        check=check_accelerator, apply=apply_accelerator, order=21,
    ),
]  # fmt: skip
