"""The device a plan is for: a product from the backends' tables, or the backend this machine selects.

Memory: `--device-memory GIB` beats `--device-product NAME` beats the device itself (its total memory).
Peak: the product's table, else the backend's (its table, LLAMA_HW_PEAK_TFLOPS, or the CPU's probe).
MFU: `--calibrate RESULTS.jsonl` (the median of matching bench records) beats the product's assumption.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from llama_hw.backends.products import GIB, DeviceProduct, find_product
from llama_hw.errors import UsageError
from llama_hw.plan.search import Device
from llama_hw.plan.speed import DeviceRate

DEFAULT_MFU = 0.35  # a device of no known product (and the CPU)
DEFAULT_HOST_LINK_GBPS = 20.0


def calibrated_mfu(path: str, precision: str) -> tuple[float, int]:
    """Median MFU of the bench records in `path` measured at `precision` (executed work where recorded)."""
    from llama_hw.bench.results import read_jsonl

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--calibrate {path}: no such file; give a bench results file (JSON lines)")
    values = []
    for record in read_jsonl(file):
        if record.get("config", {}).get("precision", record.get("precision")) not in (precision, None):
            continue
        value = record.get("mfu_executed", record.get("mfu"))
        if isinstance(value, (int, float)) and value > 0:
            values.append(float(value))
    if not values:
        raise UsageError(f"--calibrate {path}: no bench record at {precision} with an MFU; run `llama-hw bench run` "
                         f"with --precision {precision} first")  # fmt: skip
    return statistics.median(values), len(values)


def product_device(product: DeviceProduct, precision: str, memory_gib: float | None, mfu: float | None) -> Device:
    if precision not in product.peak_tflops:
        raise UsageError(f"{product.name} has no {precision}; choose --precision "
                         f"{' or '.join(product.precisions)}")  # fmt: skip
    memory = int(memory_gib * GIB) if memory_gib else product.memory_bytes
    rate = DeviceRate(product.peak_tflops[precision], mfu or product.assumed_mfu, product.host_link_gbps)
    source = f"{product.name} table" + (f", --device-memory {memory_gib:g} GiB" if memory_gib else "")
    return Device(product.name, memory, int(product.runtime_reserve_gib * GIB), rate, source)


def backend_device(backend, precision: str, memory_gib: float | None, mfu: float | None) -> Device:
    """This machine's device through its Backend (the trainer's call: nothing device-specific here)."""
    name = backend.device_name()
    product = product_named(name)
    if product is not None and memory_gib is None:
        return product_device(product, precision, backend.device_memory_bytes() / GIB, mfu)
    peak = backend.peak_tflops(precision)
    if not peak:
        raise UsageError(f"no peak TFLOP/s known for {name} at {precision}; set LLAMA_HW_PEAK_TFLOPS or "
                         "--device-product")  # fmt: skip
    memory = int(memory_gib * GIB) if memory_gib else backend.device_memory_bytes()
    rate = DeviceRate(peak, mfu or (product.assumed_mfu if product else DEFAULT_MFU),
                      product.host_link_gbps if product else DEFAULT_HOST_LINK_GBPS)  # fmt: skip
    source = f"{backend.name} backend ({name})" + (f", --device-memory {memory_gib:g} GiB" if memory_gib else "")
    return Device(name, memory, backend.runtime_reserve_bytes(), rate, source)


def product_named(device_name: str) -> DeviceProduct | None:
    """The product whose longest name occurs in the device's own name ("NVIDIA H100 PCIe" -> H100-PCIe)."""
    from llama_hw.backends.products import PRODUCTS, name_key

    key = name_key(device_name)
    matches = [(len(name_key(n)), product) for product in PRODUCTS for n in (product.name, *product.aliases)
               if name_key(n) in key]  # fmt: skip
    return max(matches, key=lambda match: match[0])[1] if matches else None


def resolve_device(*, product: str | None, memory_gib: float | None, precision: str, backend=None,
                   mfu: float | None = None) -> Device:  # fmt: skip
    if memory_gib is not None and memory_gib <= 0:
        raise UsageError(f"--device-memory must be a positive number of GiB, got {memory_gib:g}")
    if product:
        return product_device(find_product(product), precision, memory_gib, mfu)
    if backend is None:
        raise UsageError("no device to plan for: give --device-product NAME or --device-memory GIB")
    return backend_device(backend, precision, memory_gib, mfu)
