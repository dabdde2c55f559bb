"""NVIDIA CUDA backend: nccl; bf16 from compute capability 8.0 (Ampere) on; dense tensor-core peaks."""

from __future__ import annotations

import re

import torch

from llama_hw.backends.base import Availability, TorchDeviceModuleBackend
from llama_hw.utils.imports import torch_base_version

# Dense (no 2:4 sparsity) peak TFLOP/s per GPU from NVIDIA's data sheets. fp32 is the non-tensor-core
# rate: torch keeps TF32 matmuls off by default. First matching pattern wins, so variants come first.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (r"H100.*PCIe", {"bf16": 756, "fp16": 756, "fp32": 51}),
    (r"H100.*NVL", {"bf16": 835, "fp16": 835, "fp32": 60}),
    (r"H100|H800|H200|GH200", {"bf16": 989, "fp16": 989, "fp32": 67}),
    (r"H20\b", {"bf16": 148, "fp16": 148, "fp32": 44}),
    (r"A100|A800", {"bf16": 312, "fp16": 312, "fp32": 19.5}),
    (r"L40S", {"bf16": 362, "fp16": 362, "fp32": 91.6}),
    (r"\bA10G?\b", {"bf16": 125, "fp16": 125, "fp32": 31.2}),
    (r"RTX 4090", {"bf16": 165, "fp16": 165, "fp32": 82.6}),
    (r"V100", {"fp16": 125, "fp32": 15.7}),
]


def table_lookup(device_name: str, precision: str) -> float | None:
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peaks.get(precision)
    return None


class CudaBackend(TorchDeviceModuleBackend):
    name = "cuda"
    detection_order = 20
    torch_device_type = "cuda"
    dist_backend = "nccl"
    deepspeed_accelerator = "cuda"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"
    forwarded_env_prefixes = ("NCCL_", "CUDA_")

    def availability(self) -> Availability:
        if torch.version.cuda is None:
            return Availability(
                False,
                f"this torch ({torch.__version__}) is a build without CUDA support. Install a CUDA build, "
                f"e.g. `pip install torch=={torch_base_version()} --index-url "
                "https://download.pytorch.org/whl/cu126`.",
            )
        if self.device_count() == 0:
            return Availability(
                False,
                "torch was built with CUDA but sees no GPU." + self.visible_devices_hint()
                + " Check that `nvidia-smi` lists the GPUs and that the NVIDIA driver is loaded.",
            )
        if not torch.cuda.is_available():
            return Availability(False, "the CUDA driver failed to initialise; check `nvidia-smi`.")
        return Availability(True)

    def supported_precisions(self) -> tuple[str, ...]:
        major, _minor = torch.cuda.get_device_capability()
        return ("fp32", "fp16", "bf16") if major >= 8 else ("fp32", "fp16")

    def table_peak_tflops(self, precision: str) -> float | None:
        return table_lookup(self.device_name(), precision)


BACKEND = CudaBackend
