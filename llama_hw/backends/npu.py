"""Huawei Ascend NPU backend (torch_npu): hccl; 910A runs fp16 only, 910B adds bf16."""

from __future__ import annotations

import re

from llama_hw.backends.base import Availability, TorchDeviceModuleBackend
from llama_hw.errors import DeviceUnavailable
from llama_hw.utils.imports import import_torch_npu

# Chips with bf16 arithmetic: Atlas A2 (Ascend910B1..B4) and A3 (Ascend910_93xx). The first-generation
# Ascend 910 (Ascend910A / ProA / ProB / PremiumA) has fp16 cubes only.
BF16_CHIPS = re.compile(r"Ascend910B|Ascend910_93")
# Dense peak TFLOP/s. 910B differs per SKU (B1..B4): override with LLAMA_HW_PEAK_TFLOPS.
PEAK_TFLOPS = {"910A": {"fp16": 256.0}, "910B": {"bf16": 354.0, "fp16": 354.0}}

HCCL_DEFAULTS = {"HCCL_CONNECT_TIMEOUT": "1200", "HCCL_EXEC_TIMEOUT": "1200"}


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
