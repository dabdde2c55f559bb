"""Device backends: discovery, explicit selection and auto-detection.

Each module in this package defines `BACKEND = SomeBackend`; adding an accelerator (mps, xpu) is one
new file. Selection: `--device` beats `LLAMA_HW_DEVICE` beats auto-detection, which tries backends in
`detection_order` (npu, cuda, cpu) and takes the first available one.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from dataclasses import dataclass

from llama_hw.backends.base import PRECISIONS, TORCH_DTYPES, Availability, Backend, MemoryStats
from llama_hw.errors import UsageError

DEVICE_ENV = "LLAMA_HW_DEVICE"
AUTO = "auto"

__all__ = [
    "AUTO",
    "DEVICE_ENV",
    "PRECISIONS",
    "TORCH_DTYPES",
    "Availability",
    "Backend",
    "MemoryStats",
    "Selection",
    "backend_classes",
    "get_backend",
    "select_backend",
]


@functools.cache
def backend_classes() -> dict[str, type[Backend]]:
    """Every backend module of this package, in auto-detection order."""
    found: list[type[Backend]] = []
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        backend = getattr(module, "BACKEND", None)
        if backend is not None:
            found.append(backend)
    return {cls.name: cls for cls in sorted(found, key=lambda cls: cls.detection_order)}


def get_backend(name: str) -> Backend:
    classes = backend_classes()
    if name not in classes:
        raise UsageError(f"unknown device {name!r}; choose one of {AUTO}, {', '.join(classes)}")
    return classes[name]()


@dataclass(frozen=True)
class Selection:
    backend: Backend
    reason: str  # why this backend, for `llama-hw env` and the trainer's start banner


def select_backend(requested: str | None = None) -> Selection:
    """The backend to run on: explicit request, else LLAMA_HW_DEVICE, else the first available.

    An explicit request for an unavailable device raises DeviceUnavailable; it never falls back.
    """
    if requested and requested != AUTO:
        return Selection(get_backend(requested).require(), f"requested with --device {requested}")
    from_env = os.environ.get(DEVICE_ENV, "").strip()
    if from_env and from_env != AUTO:
        return Selection(get_backend(from_env).require(), f"requested with {DEVICE_ENV}={from_env}")
    skipped = []
    for name, cls in backend_classes().items():
        backend = cls()
        if backend.availability().available:
            why = "auto-detected" + (f"; unavailable: {', '.join(skipped)}" if skipped else "")
            return Selection(backend, why)
        skipped.append(name)
    raise AssertionError("the cpu backend is always available")
