"""The `Backend` interface: everything the recipes need to know about one kind of accelerator.

A backend answers whether it can be used (and precisely why not), how to bind a process to its local
device, what precisions it runs, which torch.distributed / DeepSpeed backend it pairs with, which
environment a launcher sets, what transformers' Trainer needs, and its peak dense TFLOP/s for MFU.
Trainer, launcher, benchmark and chat only talk to this interface, never to a device name.
"""

from __future__ import annotations

import abc
import os
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from llama_hw.errors import DeviceUnavailable, UsageError

PRECISIONS = ("fp32", "bf16", "fp16")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PEAK_TFLOPS_ENV = "LLAMA_HW_PEAK_TFLOPS"


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""  # when unavailable: the cause and the fix, one paragraph


@dataclass(frozen=True)
class MemoryStats:
    allocated_bytes: int
    peak_allocated_bytes: int


def peak_tflops_override(precision: str) -> float | None:
    """`LLAMA_HW_PEAK_TFLOPS=354` (every precision) or `bf16=354,fp16=354` (per precision)."""
    raw = os.environ.get(PEAK_TFLOPS_ENV, "").strip()
    if not raw:
        return None
    try:
        if "=" not in raw:
            return float(raw)
        pairs = dict(item.split("=", 1) for item in raw.split(",") if item.strip())
        value = pairs.get(precision)
        return float(value) if value is not None else None
    except ValueError as err:
        raise UsageError(
            f"{PEAK_TFLOPS_ENV}={raw!r} is not a number or a list like 'bf16=354,fp16=354'"
        ) from err


class Backend(abc.ABC):
    """One kind of accelerator. Subclasses live one per module in llama_hw/backends/."""

    name: ClassVar[str]  # what --device and LLAMA_HW_DEVICE accept
    detection_order: ClassVar[int]  # auto-detection tries lower numbers first
    torch_device_type: ClassVar[str]  # torch.device(type)
    dist_backend: ClassVar[str]  # torch.distributed backend
    deepspeed_accelerator: ClassVar[str]  # DS_ACCELERATOR value
    visible_devices_env: ClassVar[str | None] = None
    # Variables a multi-node launcher carries to remote nodes (besides LLAMA_HW_*).
    forwarded_env_prefixes: ClassVar[tuple[str, ...]] = ()
    # Bytes per element of the mask dropout saves for backward: a bool from CUDA's and Ascend's fused dropout;
    # torch's CPU dropout multiplies by a float noise tensor of the input's dtype (4 bytes in fp32).
    dropout_mask_bytes: ClassVar[int] = 1

    # -- availability -------------------------------------------------------------------------
    @abc.abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run here; when not, the precise reason and the fix."""

    def require(self) -> "Backend":
        status = self.availability()
        if not status.available:
            raise DeviceUnavailable(f"--device {self.name} is unavailable: {status.reason}")
        return self

    # -- devices ------------------------------------------------------------------------------
    @abc.abstractmethod
    def device_count(self) -> int: ...

    @abc.abstractmethod
    def device_name(self, index: int = 0) -> str: ...

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device(self.torch_device_type, local_rank)

    def bind(self, local_rank: int) -> torch.device:
        """Make `local_rank`'s device current for this process and return it."""
        return self.device(local_rank)

    def synchronize(self) -> None:
        """Wait for queued device work, so that timings measure the work and not its launch."""

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    @abc.abstractmethod
    def memory_stats(self) -> MemoryStats: ...

    @abc.abstractmethod
    def reset_peak_memory(self) -> None: ...

    def device_memory_bytes(self) -> int:
        """Memory one device holds; the host's RAM for a backend that computes in host memory."""
        import psutil

        return psutil.virtual_memory().total

    def runtime_reserve_bytes(self) -> int:
        """Memory the runtime holds before the first tensor: on the host, this process's own footprint."""
        import psutil

        return psutil.Process().memory_info().rss

    # -- precision ----------------------------------------------------------------------------
    @abc.abstractmethod
    def supported_precisions(self) -> tuple[str, ...]:
        """Training precisions of the current device, a subset of PRECISIONS."""

    def check_precision(self, precision: str) -> None:
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        supported = self.supported_precisions()
        if precision not in supported:
            raise UsageError(
                f"{precision} is not supported on {self.device_name()} ({self.name}); supported: "
                f"{', '.join(supported)}. Use --{supported[-1]} or --precision {supported[-1]}."
            )

    def default_precision(self) -> str:
        """The fastest supported training precision: bf16, else fp16, else fp32."""
        for precision in ("bf16", "fp16", "fp32"):
            if precision in self.supported_precisions():
                return precision
        return "fp32"

    # -- performance --------------------------------------------------------------------------
    def peak_tflops(self, precision: str) -> float | None:
        """Dense peak TFLOP/s per device for MFU; LLAMA_HW_PEAK_TFLOPS overrides; None if unknown."""
        override = peak_tflops_override(precision)
        return override if override is not None else self.table_peak_tflops(precision)

    @abc.abstractmethod
    def table_peak_tflops(self, precision: str) -> float | None: ...

    # -- integration with the distributed stack ---------------------------------------------------
    def launcher_env(self, nproc_per_node: int) -> dict[str, str]:
        """Defaults a launcher exports for each worker; variables already set by the user win."""
        return {"DS_ACCELERATOR": self.deepspeed_accelerator}

    def trainer_arguments(self, world_size: int | None = None) -> dict[str, Any]:
        """Keyword arguments for transformers.TrainingArguments that make Trainer use this backend.

        `world_size` defaults to WORLD_SIZE (set by torchrun). A single process gets no ddp_backend:
        accelerate would otherwise treat the run as distributed and ask for a process group.
        """
        if world_size is None:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
        return {"ddp_backend": self.dist_backend} if world_size > 1 else {}

    def describe(self) -> dict[str, Any]:
        status = self.availability()
        info: dict[str, Any] = {"name": self.name, **asdict(status)}
        if status.available:
            precisions = self.supported_precisions()
            info.update(
                device_count=self.device_count(),
                device_name=self.device_name(),
                precisions=list(precisions),
                dist_backend=self.dist_backend,
                deepspeed_accelerator=self.deepspeed_accelerator,
                visible_devices_env=self.visible_devices_env,
                peak_tflops={p: self.peak_tflops(p) for p in precisions},
            )
        return info


class TorchDeviceModuleBackend(Backend):
    """A backend whose torch device module (`torch.cuda`, `torch.npu`) has the CUDA-style API."""

    def device_module(self):
        return getattr(torch, self.torch_device_type)

    def device_count(self) -> int:
        return self.device_module().device_count()

    def device_name(self, index: int = 0) -> str:
        return self.device_module().get_device_name(index)

    def bind(self, local_rank: int) -> torch.device:
        self.device_module().set_device(local_rank)
        return self.device(local_rank)

    def synchronize(self) -> None:
        self.device_module().synchronize()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.device_module().manual_seed_all(seed)

    def memory_stats(self) -> MemoryStats:
        module = self.device_module()
        return MemoryStats(module.memory_allocated(), module.max_memory_allocated())

    def reset_peak_memory(self) -> None:
        self.device_module().reset_peak_memory_stats()

    def device_memory_bytes(self) -> int:
        return self.device_module().get_device_properties(0).total_memory

    def runtime_reserve_bytes(self) -> int:
        from llama_hw.backends.products import GIB

        return GIB  # the context, the collectives' buffers and kernel workspaces

    def visible_devices_hint(self) -> str:
        value = os.environ.get(self.visible_devices_env or "")
        if value is None:
            return ""
        return f" {self.visible_devices_env}={value!r} limits which devices this process sees."
