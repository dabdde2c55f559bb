"""CPU backend: always available; gloo; peak FLOP/s measured by a short GEMM probe and cached."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from llama_hw.backends.base import TORCH_DTYPES, Availability, Backend, MemoryStats
from llama_hw.utils.files import write_json_atomically

CACHE_DIR_ENV = "LLAMA_HW_CACHE_DIR"
_CLEAR_REFS = "/proc/self/clear_refs"


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cache_dir() -> Path:
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llama_hw"
    )
    return Path(root)


def measure_gemm_tflops(dtype: torch.dtype, sizes=(1024, 2048), seconds: float = 0.4) -> float:
    """Best sustained square-GEMM TFLOP/s over `sizes`, with the current torch thread count."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)  # warm-up: thread pool, packing buffers
        runs, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            runs += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and runs >= 2:
                break
        best = max(best, 2 * n**3 * runs / elapsed / 1e12)
    return best


class CpuBackend(Backend):
    name = "cpu"
    detection_order = 100
    torch_device_type = "cpu"
    dist_backend = "gloo"
    deepspeed_accelerator = "cpu"

    def availability(self) -> Availability:
        return Availability(True)

    def device_count(self) -> int:
        return 1

    def device_name(self, index: int = 0) -> str:
        return cpu_model_name()

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cpu")

    def memory_stats(self) -> MemoryStats:
        """Host RSS: on CPU the model lives in process memory, so RSS is the device memory."""
        import psutil

        current = psutil.Process().memory_info().rss
        peak = current
        try:
            with open("/proc/self/status", encoding="utf-8") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) * 1024
        except OSError:
            pass
        return MemoryStats(current, max(peak, current))

    def reset_peak_memory(self) -> None:
        # Writing 5 to clear_refs resets the kernel's RSS high-water mark (Linux >= 4.0).
        try:
            with open(_CLEAR_REFS, "w", encoding="utf-8") as handle:
                handle.write("5")
        except OSError:
            pass

    def supported_precisions(self) -> tuple[str, ...]:
        # bf16 runs everywhere in torch, but emulated it is slower than fp32: offer it only where
        # the CPU has native bf16 arithmetic (AVX512-BF16 / AMX on x86, BF16 on Arm).
        if cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"}:
            return ("fp32", "bf16")
        return ("fp32",)

    def default_precision(self) -> str:
        return "fp32"

    def table_peak_tflops(self, precision: str) -> float | None:
        if precision not in self.supported_precisions():
            return None
        return self.measured_peak_tflops(precision)

    def measured_peak_tflops(self, precision: str) -> float:
        """Measure once per CPU model, thread count, torch version and precision; then read the cache."""
        key = f"{cpu_model_name()}|threads={torch.get_num_threads()}|torch={torch.__version__}|{precision}"
        path = cache_dir() / "cpu_peak_tflops.json"
        cached: dict[str, Any] = {}
        if path.exists():
            try:
                cached = json.loads(path.read_text())
            except (OSError, ValueError):
                cached = {}
        if key not in cached:
            cached[key] = round(measure_gemm_tflops(TORCH_DTYPES[precision]), 4)
            write_json_atomically(path, cached, indent=1)
        return float(cached[key])

    def launcher_env(self, nproc_per_node: int) -> dict[str, str]:
        # Without this every worker starts one thread per core and the workers thrash each other.
        threads = max(1, (os.cpu_count() or 1) // max(1, nproc_per_node))
        return {**super().launcher_env(nproc_per_node), "OMP_NUM_THREADS": str(threads)}

    def trainer_arguments(self, world_size: int | None = None) -> dict[str, Any]:
        # Without use_cpu + gloo, Trainer under torchrun on CPU skips DDP: the replicas drift apart
        # and the logged loss doubles (measured). use_cpu also keeps Trainer off any GPU it could see.
        return {"use_cpu": True, **super().trainer_arguments(world_size)}


BACKEND = CpuBackend
