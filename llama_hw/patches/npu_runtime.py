"""Process-level settings for Ascend: operator compilation mode and DeepSpeed's NPU support.

- torch_npu compiles operators just in time by default, which makes the first steps of a run take minutes;
  `torch.npu.set_compile_mode(jit_compile=False)` uses the precompiled binary kernels instead.
- DeepSpeed below 0.10.1 knows no NPU: the `deepspeed_npu` plugin must be imported in every process
  before DeepSpeed initialises (the old recipe edited DeepSpeed's launcher for that). Each llama_hw
  worker calls `apply_patches` at start, which imports it. From 0.10.1 DeepSpeed has an NPU accelerator
  and only needs DS_ACCELERATOR=npu, which child processes inherit.
"""

from __future__ import annotations

import importlib

import torch

from llama_hw.errors import DeviceUnavailable
from llama_hw.patches.base import Changes, Patch, PatchContext
from llama_hw.patches.deepspeed_accelerator import apply_accelerator, check_accelerator
from llama_hw.utils.imports import package_version

NATIVE_NPU_DEEPSPEED = "0.10.1"
DEEPSPEED_NPU_SOURCE = "https://gitee.com/ascend/DeepSpeed"


def check_compile_mode(ctx: PatchContext) -> str | None:
    ctx.torch_npu()  # registers torch.npu
    if not hasattr(torch.npu, "set_compile_mode"):
        return "this torch_npu has no torch.npu.set_compile_mode"
    return None


def apply_compile_mode(ctx: PatchContext) -> Changes:
    npu = torch.npu
    was_off = npu.is_jit_compile_false() if hasattr(npu, "is_jit_compile_false") else False
    npu.set_compile_mode(jit_compile=False)
    changes = Changes()
    changes.on_undo(lambda: npu.set_compile_mode(jit_compile=not was_off))
    return changes


def import_deepspeed_npu(ctx: PatchContext) -> None:
    try:
        importlib.import_module("deepspeed_npu")
    except ModuleNotFoundError as err:
        if err.name != "deepspeed_npu":
            raise DeviceUnavailable(f"the deepspeed_npu plugin failed to import: {err}") from err
        raise DeviceUnavailable(
            f"DeepSpeed {package_version('deepspeed')} predates native NPU support ({NATIVE_NPU_DEEPSPEED}) and "
            f"needs the deepspeed_npu plugin, which is not installed. Install it from {DEEPSPEED_NPU_SOURCE} "
            f"(`pip install .` in a checkout matching your DeepSpeed), or upgrade: `pip install "
            f"'deepspeed>={NATIVE_NPU_DEEPSPEED}'`. If this run does not use DeepSpeed, set "
            "LLAMA_HW_PATCHES=-deepspeed_npu_plugin."
        ) from err
    except ImportError as err:
        raise DeviceUnavailable(f"the deepspeed_npu plugin failed to import: {err}") from err


def keep_imported(state: None) -> None:
    """An imported plugin patches DeepSpeed in place; there is nothing to put back."""


PATCHES = [
    Patch(
        name="npu_jit_compile_off",
        summary="use precompiled operator binaries instead of compiling each operator on first use",
        replaces="torch.npu.set_compile_mode(jit_compile=True) -> False",
        scope="process", backends=("npu",),
        check=check_compile_mode, apply=apply_compile_mode, order=10,
    ),
    Patch(
        name="deepspeed_npu_plugin",
        summary="import deepspeed_npu so that DeepSpeed < 0.10.1 can use NPUs",
        replaces="DeepSpeed's CUDA-only accelerator -> the deepspeed_npu plugin",
        scope="process", backends=("npu",), modes=("train",),
        requires=(f"deepspeed<{NATIVE_NPU_DEEPSPEED}",),
        apply=import_deepspeed_npu, revert=keep_imported, reversible=False, order=20,
    ),
    Patch(
        name="deepspeed_npu_accelerator",
        summary="select DeepSpeed's built-in NPU accelerator for this process and its children",
        replaces="DS_ACCELERATOR (auto-detection) -> npu",
        scope="process", backends=("npu",), modes=("train",),
        requires=(f"deepspeed>={NATIVE_NPU_DEEPSPEED}",),
        check=check_accelerator, apply=apply_accelerator, order=21,
    ),
]  # fmt: skip
