"""Accelerator products a plan can be made for without the device at hand: memory, peaks, link speeds.

`llama-hw plan --device-product H100` needs what a GPU or NPU of that kind holds and does before anyone
has one. Peak TFLOP/s come from the same tables the backends use for MFU (NVIDIA's data sheets; Huawei's
Atlas 800T A2 / A3 figures for 910B / 910_93). `assumed_mfu` is what a well-tuned LLaMA fine-tune
reaches on that kind of device (the planner's default; `--calibrate` replaces it with measured runs).
`runtime_reserve_gib` is the device memory that the runtime itself holds before the first tensor: the
CUDA context and NCCL buffers (~1 GiB), or CANN's workspace and HCCL buffers on Ascend (~3 GiB).
`host_link_gbps` is the host-device copy rate that offloaded optimizer states and parameters travel at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llama_hw.errors import UsageError

GIB = 1024**3


@dataclass(frozen=True)
class DeviceProduct:
    name: str
    backend: str  # the Backend.name that runs it
    memory_gib: float
    peak_tflops: dict[str, float]  # dense, per training precision
    assumed_mfu: float
    runtime_reserve_gib: float
    host_link_gbps: float  # effective GB/s of one device's host link (PCIe / HCCS)
    aliases: tuple[str, ...] = field(default=())

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.peak_tflops)


_A100 = {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}
_H100 = {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}
_910B = {"bf16": 354.0, "fp16": 354.0, "fp32": 88.0}

PRODUCTS: tuple[DeviceProduct, ...] = (
    DeviceProduct("A100-40GB", "cuda", 40, _A100, 0.45, 1.0, 20.0, ("A100-40", "A100-SXM4-40GB", "A100 40GB")),
    DeviceProduct("A100-80GB", "cuda", 80, _A100, 0.45, 1.0, 20.0, ("A100", "A100-80", "A800", "A800-80GB")),
    DeviceProduct("H100", "cuda", 80, _H100, 0.40, 1.0, 40.0, ("H100-80GB", "H100-SXM", "H800")),
    DeviceProduct("H100-PCIe", "cuda", 80, {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}, 0.40, 1.0, 40.0),
    DeviceProduct("H200", "cuda", 141, _H100, 0.40, 1.0, 40.0, ("H200-141GB",)),
    DeviceProduct("L40S", "cuda", 48, {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}, 0.35, 1.0, 20.0),
    DeviceProduct("A10", "cuda", 24, {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}, 0.35, 0.8, 20.0, ("A10G",)),
    DeviceProduct("RTX4090", "cuda", 24, {"bf16": 165.0, "fp16": 165.0, "fp32": 82.6}, 0.35, 0.8, 20.0,
                  ("RTX-4090", "4090")),  # fmt: skip
    DeviceProduct("V100-32GB", "cuda", 32, {"fp16": 125.0, "fp32": 15.7}, 0.35, 0.8, 10.0, ("V100",)),
    DeviceProduct("910A", "npu", 32, {"fp16": 256.0, "fp32": 64.0}, 0.30, 3.0, 20.0, ("Ascend910A",)),
    DeviceProduct("910B1", "npu", 64, {"bf16": 414.0, "fp16": 414.0, "fp32": 103.0}, 0.35, 3.0, 25.0,
                  ("Ascend910B1",)),  # fmt: skip
    DeviceProduct("910B2", "npu", 64, {"bf16": 376.0, "fp16": 376.0, "fp32": 94.0}, 0.35, 3.0, 25.0,
                  ("Ascend910B2", "910B")),  # fmt: skip
    DeviceProduct("910B3", "npu", 64, _910B, 0.35, 3.0, 25.0, ("Ascend910B3",)),
    DeviceProduct("910B4", "npu", 32, {"bf16": 280.0, "fp16": 280.0, "fp32": 70.0}, 0.35, 3.0, 25.0,
                  ("Ascend910B4",)),  # fmt: skip
    DeviceProduct("910_93", "npu", 64, _910B, 0.35, 3.0, 25.0, ("Ascend910_93", "A3")),
)


def name_key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def find_product(name: str) -> DeviceProduct:
    """The product called `name` (case, spaces, '-' and '_' ignored), or a UsageError listing the known ones."""
    wanted = name_key(name)
    for product in PRODUCTS:
        if wanted in {name_key(product.name), *(name_key(alias) for alias in product.aliases)}:
            return product
    known = ", ".join(product.name for product in PRODUCTS)
    raise UsageError(f"--device-product {name}: unknown product; choose one of {known}, or give --device-memory GIB")
