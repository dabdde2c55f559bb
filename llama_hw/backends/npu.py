"""Huawei Ascend NPU backend (torch_npu): hccl; 910A runs fp16 only, 910B adds bf16."""

from __future__ import annotations

import glob
import importlib
import os
import re

from llama_hw.backends.base import Availability, TorchDeviceModuleBackend
from llama_hw.errors import DeviceUnavailable
from llama_hw.utils.imports import (
    AUTOLOAD_FAILURE,
    CANN_SET_ENV,
    explain_torch_import_failure,
    is_package_importable,
    package_version,
    release,
    torch_base_version,
)

# Chips with bf16 arithmetic: Atlas A2 (Ascend910B1..B4) and A3 (Ascend910_93xx). The first-generation
# Ascend 910 (Ascend910A / ProA / ProB / PremiumA) has fp16 cubes only.
BF16_CHIPS = re.compile(r"Ascend910B|Ascend910_93")
# Dense peak TFLOP/s. 910B differs per SKU (B1..B4): override with LLAMA_HW_PEAK_TFLOPS.
PEAK_TFLOPS = {"910A": {"fp16": 256.0}, "910B": {"bf16": 354.0, "fp16": 354.0}}

HCCL_DEFAULTS = {"HCCL_CONNECT_TIMEOUT": "1200", "HCCL_EXEC_TIMEOUT": "1200"}


def _explain_torch_npu_import_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    if re.search(r"lib(hccl|ascendcl|acl_op_compiler|ge_runner|runtime|msprof)\w*\.so", text):
        return (
            f"torch_npu is installed but cannot load the CANN libraries ({text}). The CANN environment "
            f"is not sourced in this shell: run `source {CANN_SET_ENV}` (or the set_env.sh of your CANN "
            "install) and try again."
        )
    if AUTOLOAD_FAILURE in text:
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


class NpuBackend(TorchDeviceModuleBackend):
    name = "npu"
    detection_order = 10
    torch_device_type = "npu"
    dist_backend = "hccl"
    deepspeed_accelerator = "npu"
    visible_devices_env = "ASCEND_RT_VISIBLE_DEVICES"
    forwarded_env_prefixes = ("ASCEND_", "HCCL_")

    def device_module(self):
        import_torch_npu()  # registers torch.npu
        return super().device_module()

    def availability(self) -> Availability:
        try:
            count = self.device_count()
        except DeviceUnavailable as err:
            return Availability(False, str(err))
        except RuntimeError as err:  # the driver answers device_count with an exception
            return Availability(False, f"torch_npu cannot query the NPUs ({err}); check `npu-smi info`.")
        if count == 0:
            return Availability(
                False,
                "torch_npu is installed but sees no NPU." + self.visible_devices_hint()
                + " Check that `npu-smi info` lists the NPUs and that the Ascend driver is installed.",
            )
        return Availability(True)

    def chip_generation(self) -> str:
        return "910B" if BF16_CHIPS.search(self.device_name()) else "910A"

    def supported_precisions(self) -> tuple[str, ...]:
        return ("fp32", "fp16", "bf16") if self.chip_generation() == "910B" else ("fp32", "fp16")

    def table_peak_tflops(self, precision: str) -> float | None:
        return PEAK_TFLOPS[self.chip_generation()].get(precision)

    def launcher_env(self, nproc_per_node: int) -> dict[str, str]:
        return {**super().launcher_env(nproc_per_node), **HCCL_DEFAULTS}


BACKEND = NpuBackend
