"""Availability checks for optional libraries, in one place, imported lazily.

Nothing here imports an optional package at module import time: `import llama_hw` must work on a
laptop without a device extension, DeepSpeed or flash-attn, and a broken device extension must not break
it. The checks that belong to one accelerator (importing its extension, its runtime's version) live in
that accelerator's backend module.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re

from llama_hw.errors import DeviceUnavailable

CANN_SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"  # the Ascend runtime a broken autoload needs
AUTOLOAD_FAILURE = "Failed to load the backend extension"


def package_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None; never imports it."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_package_importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def release(version: str) -> tuple[int, ...]:
    """`2.6.0.post3+cpu` -> (2, 6, 0): the part that torch and its device extensions must share."""
    numbers = re.match(r"(\d+(?:\.\d+)*)", version)
    return tuple(int(n) for n in numbers.group(1).split("."))[:3] if numbers else ()


def torch_base_version() -> str:
    import torch

    return ".".join(str(n) for n in release(torch.__version__))


def is_deepspeed_available() -> bool:
    return is_package_importable("deepspeed")


def is_flash_attn_available() -> bool:
    return is_package_importable("flash_attn")


def is_bitsandbytes_available() -> bool:
    return is_package_importable("bitsandbytes")


def explain_torch_import_failure(err: BaseException) -> str | None:
    """The fix for `import torch` failing because torch autoloaded a broken device extension, else None.

    torch >= 2.5 imports out-of-tree backends listed under the `torch.backends` entry point while
    `import torch` runs, so an Ascend extension without its CANN runtime breaks torch itself with
    `RuntimeError: Failed to load the backend extension: <name>`. This runs before any backend module
    can be imported (they import torch), so the explanation lives here.
    """
    text = str(err)
    if AUTOLOAD_FAILURE not in text:
        return None
    cause = err.__cause__ or err.__context__
    detail = f" (underlying error: {type(cause).__name__}: {cause})" if cause else ""
    return (
        f"`import torch` failed: {text}{detail}. torch auto-loads installed device extensions, and this one "
        f"could not load. Fix its runtime (Ascend: `source {CANN_SET_ENV}`) or, to use torch without that "
        "device, set TORCH_DEVICE_BACKEND_AUTOLOAD=0."
    )


def import_torch():
    """`import torch`, turning an autoload failure of a device extension into DeviceUnavailable."""
    try:
        import torch
    except RuntimeError as err:
        hint = explain_torch_import_failure(err)
        if hint is None:
            raise
        raise DeviceUnavailable(hint) from err
    return torch
