"""CPU backend: always available; gloo; peak FLOP/s measured by a short GEMM probe and cached.

The probe is only as good as the machine was quiet: a GEMM timed while other jobs share the cores
reads several times too low, and every MFU divided by it several times too high (a probe cached under
load once gave 0.045 TFLOP/s against 0.36 quiet, and bench reported MFU 1.29). So the probe keeps the
best of several repeats, records the load average it ran under, is cached only when the machine was
quiet (or when it beats the cached value: a machine never computes faster than it can), and every
caller can see where the peak came from (`peak_origin`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from llama_hw.backends.base import TORCH_DTYPES, Availability, Backend, MemoryStats, peak_tflops_override
from llama_hw.utils.files import write_json_atomically

CACHE_DIR_ENV = "LLAMA_HW_CACHE_DIR"
CACHE_FILE = "cpu_peak_tflops.json"
_CLEAR_REFS = "/proc/self/clear_refs"
PROBE_REPEATS = 3
# A probe counts as quiet when the 1-minute load average before it was below this share of the cores:
# on 2 cores 0.5, i.e. no other job using a core for most of the last minute.
QUIET_LOAD_PER_CPU = 0.25


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


def measure_gemm_tflops(dtype: torch.dtype, sizes=(1024, 2048), seconds: float = 0.4, repeats: int = 1) -> float:
    """Best sustained square-GEMM TFLOP/s over `sizes` and `repeats`, with the current torch thread count.

    The best, not the mean: other work on the machine only ever slows a repeat down."""
    best = 0.0
    for _ in range(repeats):
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


def load_average() -> float | None:
    """The host's 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def quiet_load_limit() -> float:
    return QUIET_LOAD_PER_CPU * (os.cpu_count() or 1)


@dataclass(frozen=True)
class PeakOrigin:
    """Where a peak TFLOP/s figure came from: `source` is table, env, probe or cache."""

    tflops: float | None
    source: str
    measured_at: str | None = None  # probe / cache: when the probe ran (UTC, ISO 8601)
    load_1m: float | None = None  # probe / cache: the 1-minute load average just before it ran
    repeats: int | None = None
    quiet: bool | None = None  # probe / cache: load below QUIET_LOAD_PER_CPU x cores
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, "")}

    def describe(self) -> str:
        if self.source in ("table", "env"):
            text = {"table": "the device's datasheet table", "env": "LLAMA_HW_PEAK_TFLOPS"}[self.source]
        else:
            load = "unknown load" if self.load_1m is None else f"load {self.load_1m:.2f}"
            text = f"{self.source}: GEMM probe of {self.measured_at} ({load}, best of {self.repeats})"
        return text + (f"; {self.note}" if self.note else "")


# One answer per process, cache file and key: `env` and a bench run ask several times and must not probe each time.
_MEASURED: dict[tuple[Path, str], PeakOrigin] = {}


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class CpuBackend(Backend):
    name = "cpu"
    dropout_mask_bytes = 4
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
        return self.measured_peak(precision).tflops

    def peak_origin(self, precision: str) -> PeakOrigin:
        """The peak `peak_tflops` returns, and where it came from (env override, cache or a probe now)."""
        override = peak_tflops_override(precision)
        if override is not None:
            return PeakOrigin(override, "env")
        if precision not in self.supported_precisions():
            return PeakOrigin(None, "table", note=f"{precision} is not a training precision of this CPU")
        return self.measured_peak(precision)

    def measured_peak(self, precision: str, reprobe: bool = False) -> PeakOrigin:
        """The cached quiet probe for this CPU model, thread count, torch version and precision; else a probe now.

        A probe is written to the cache when the machine was quiet, or when it beats the cached figure
        (the cached one must then have been taken under load); `reprobe` probes even with a cache entry.
        Cache entries of older llama_hw versions (a bare number, load unknown) are used only until a
        quiet probe replaces them."""
        key = f"{cpu_model_name()}|threads={torch.get_num_threads()}|torch={torch.__version__}|{precision}"
        path = cache_dir() / CACHE_FILE
        if not reprobe and (path, key) in _MEASURED:
            return _MEASURED[path, key]
        cached = _read_cache(path)
        entry = cached.get(key)
        if isinstance(entry, (int, float)):
            entry = {"tflops": float(entry), "quiet": None}
        if not reprobe and isinstance(entry, dict) and entry.get("quiet"):
            origin = PeakOrigin(float(entry["tflops"]), "cache", entry.get("measured_at"), entry.get("load_1m"),
                                entry.get("repeats"), True)  # fmt: skip
            _MEASURED[path, key] = origin
            return origin
        load = load_average()
        quiet = load is not None and load < quiet_load_limit()
        tflops = round(measure_gemm_tflops(TORCH_DTYPES[precision], repeats=PROBE_REPEATS), 4)
        probe = PeakOrigin(tflops, "probe", datetime.now(timezone.utc).isoformat(timespec="seconds"), load,
                           PROBE_REPEATS, quiet)  # fmt: skip
        previous = float(entry["tflops"]) if isinstance(entry, dict) else None
        if previous is not None and previous > tflops and (entry.get("quiet") or not quiet):
            # the cache saw a faster machine than this probe did: this probe ran slowed down
            origin = PeakOrigin(previous, "cache", entry.get("measured_at"), entry.get("load_1m"),
                                entry.get("repeats"), entry.get("quiet"),
                                note=f"a probe now gave only {tflops} TFLOP/s (load {_load(load)})")  # fmt: skip
        else:
            origin = probe
            if quiet or previous is not None:  # quiet, or better than what the cache holds
                cached[key] = {k: v for k, v in probe.as_dict().items() if k != "source"}
                write_json_atomically(path, cached, indent=1)
            else:
                origin = PeakOrigin(tflops, "probe", probe.measured_at, load, PROBE_REPEATS, False,
                                    note=f"not cached: the machine was busy (load >= {quiet_load_limit():.2f}); "
                                    "MFU may read high")  # fmt: skip
        _MEASURED[path, key] = origin
        return origin

    def launcher_env(self, nproc_per_node: int) -> dict[str, str]:
        # Without this every worker starts one thread per core and the workers thrash each other.
        threads = max(1, (os.cpu_count() or 1) // max(1, nproc_per_node))
        return {**super().launcher_env(nproc_per_node), "OMP_NUM_THREADS": str(threads)}

    def trainer_arguments(self, world_size: int | None = None) -> dict[str, Any]:
        # Without use_cpu + gloo, Trainer under torchrun on CPU skips DDP: the replicas drift apart
        # and the logged loss doubles (measured). use_cpu also keeps Trainer off any GPU it could see.
        return {"use_cpu": True, **super().trainer_arguments(world_size)}


def _load(load: float | None) -> str:
    return "unknown" if load is None else f"{load:.2f}"


BACKEND = CpuBackend
