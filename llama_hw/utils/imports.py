"""Availability checks for optional libraries, in one place, imported lazily.

Nothing here imports an optional package at module import time: `import llama_hw` must work on a
laptop without torch_npu, DeepSpeed or flash-attn, and a broken torch_npu must not break it.
The torch_npu checks turn the library's real failure modes into a paragraph that names the fix.
"""

from __future__ import annotations

import glob
import importlib
import importlib.metadata
import importlib.util
import os
import re

from llama_hw.errors import DeviceUnavailable

CANN_SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
_AUTOLOAD_FAILURE = "Failed to load the backend extension"


def package_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None; never imports it."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_package_importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def release(version: str) -> tuple[int, ...]:
    """`2.6.0.post3+cpu` -> (2, 6, 0): the part that torch and torch_npu must share."""
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
    """The fix for `import torch` failing because torch autoloaded a broken torch_npu, else None.

    torch >= 2.5 imports out-of-tree backends listed under the `torch.backends` entry point while
    `import torch` runs, so a torch_npu without CANN breaks torch itself with
    `RuntimeError: Failed to load the backend extension: torch_npu`.
    """
    text = str(err)
    if _AUTOLOAD_FAILURE not in text:
        return None
    cause = err.__cause__ or err.__context__
    detail = f" (underlying error: {type(cause).__name__}: {cause})" if cause else ""
    return (
        f"`import torch` failed: {text}{detail}. torch auto-loads torch_npu, and torch_npu could not "
        f"load. Fix CANN (`source {CANN_SET_ENV}`) or, to use torch without the NPU, set "
        "TORCH_DEVICE_BACKEND_AUTOLOAD=0."
    )


def import_torch():
    """`import torch`, turning an autoload failure of torch_npu into DeviceUnavailable."""
    try:
        import torch
    except RuntimeError as err:
        hint = explain_torch_import_failure(err)
        if hint is None:
            raise
        raise DeviceUnavailable(hint) from err
    return torch


def _explain_torch_npu_import_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    if re.search(r"lib(hccl|ascendcl|acl_op_compiler|ge_runner|runtime|msprof)\w*\.so", text):
        return (
            f"torch_npu is installed but cannot load the CANN libraries ({text}). The CANN environment "
            f"is not sourced in this shell: run `source {CANN_SET_ENV}` (or the set_env.sh of your CANN "
            "install) and try again."
        )
    if _AUTOLOAD_FAILURE in text:
        return explain_torch_import_failure(err) or text
    return (
        f"torch_npu is installed but failed to import ({text}). Check that CANN is installed and sourced "
        f"(`source {CANN_SET_ENV}`) and that torch-npu matches torch {torch_base_version()}."
    )


def import_torch_npu():
    """Import torch_npu or raise DeviceUnavailable with the precise cause and fix."""
    if not is_package_importable("torch_npu"):
        version = torch_base_version()
        raise DeviceUnavailable(
            "torch_npu is not installed, so the Ascend NPU backend is unavailable. Install the build that "
            f"matches your torch {version}: `pip install torch-npu=={version}` (or `pip install "
            "'llama-hw[npu]'`), with the Ascend CANN toolkit installed and sourced."
        )
    try:
        torch_npu = importlib.import_module("torch_npu")
    except (ImportError, OSError, RuntimeError) as err:
        raise DeviceUnavailable(_explain_torch_npu_import_error(err)) from err
    npu_version = getattr(torch_npu, "__version__", None) or package_version("torch-npu") or ""
    import torch

    if release(npu_version) and release(npu_version) != release(torch.__version__):
        raise DeviceUnavailable(
            f"torch_npu {npu_version} does not match torch {torch.__version__}: torch-npu's version must "
            f"equal torch's. Install `pip install torch-npu=={torch_base_version()}` or the torch that "
            f"matches torch_npu (`pip install torch=={'.'.join(map(str, release(npu_version)))}`)."
        )
    return torch_npu


def cann_version() -> str | None:
    """The CANN toolkit version, from torch_npu when it knows, else from the toolkit's install info."""
    try:
        from torch_npu.utils import get_cann_version  # type: ignore[import-not-found]

        version = get_cann_version(module="CANN")
        if version:
            return version
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        pass
    home = os.environ.get("ASCEND_TOOLKIT_HOME") or os.environ.get("ASCEND_HOME_PATH")
    roots = [home] if home else ["/usr/local/Ascend/ascend-toolkit/latest"]
    for root in roots:
        for info in glob.glob(os.path.join(root, "*", "ascend_toolkit_install.info")):
            with open(info, encoding="utf-8") as handle:
                for line in handle:
                    if line.startswith("version="):
                        return line.split("=", 1)[1].strip()
    return None
