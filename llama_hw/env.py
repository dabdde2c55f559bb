"""`llama-hw env`: which accelerator llama_hw will use and why, what it can do, and the versions in play."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

from llama_hw.backends import AUTO, backend_classes, select_backend
from llama_hw.backends.npu import cann_version
from llama_hw.errors import UsageError
from llama_hw.patches import describe_patches
from llama_hw.utils.imports import package_version

VERSIONED_DISTRIBUTIONS = (
    "torch", "torch-npu", "transformers", "peft", "accelerate", "deepspeed", "fschat",
    "flash-attn", "bitsandbytes", "safetensors", "datasets",
)  # fmt: skip


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    found.update({name: package_version(name) for name in VERSIONED_DISTRIBUTIONS})
    found["cann"] = cann_version()
    return found


def peak_origin(backend, precision: str, reprobe: bool = False) -> dict[str, Any]:
    """Where the backend's peak TFLOP/s for `precision` comes from: {"tflops", "source", ...}.

    source: "env" (LLAMA_HW_PEAK_TFLOPS), "table" (the datasheet figure of the device), "probe" (the CPU's
    GEMM probe, run now: with its date and load average) or "cache" (an earlier quiet probe)."""
    from llama_hw.backends.base import peak_tflops_override

    if hasattr(backend, "peak_origin"):
        if reprobe and peak_tflops_override(precision) is None and precision in backend.supported_precisions():
            return backend.measured_peak(precision, reprobe=True).as_dict()
        return backend.peak_origin(precision).as_dict()
    if peak_tflops_override(precision) is not None:
        return {"tflops": peak_tflops_override(precision), "source": "env"}
    return {"tflops": backend.table_peak_tflops(precision), "source": "table"}


def describe_origin(origin: dict[str, Any]) -> str:
    """One phrase: `env`, `table`, or `probe 2026-12-01T22:00:00+00:00 (load 0.12, best of 3)`."""
    source = origin["source"]
    if source in ("probe", "cache"):
        load = origin.get("load_1m")
        text = f"{source} {origin.get('measured_at') or 'of unknown date'} ("
        text += ("unknown load" if load is None else f"load {load:.2f}") + (f", best of {origin['repeats']})"
                                                                          if origin.get("repeats") else ")")
        source = text
    return source + (f"; {origin['note']}" if origin.get("note") else "")


def collect(device: str | None = None, reprobe: bool = False) -> dict[str, Any]:
    selection = select_backend(device)
    backend = selection.backend
    origins = {}
    if backend.availability().available:
        origins = {p: peak_origin(backend, p, reprobe) for p in backend.supported_precisions()}
    selected = backend.describe()  # after a re-probe: describe() reads the same, memoized, figure
    return {
        "backend": selection.backend.name,
        "reason": selection.reason,
        "selected": selected,
        "peak_origin": origins,
        "backends": [cls().describe() for cls in backend_classes().values()],
        "versions": versions(),
        "host": platform.node(),
        # What the trainer would patch on this backend for a llama model in train mode (LLAMA_HW_PATCHES).
        "patches": describe_patches(selection.backend, model_type="llama", mode="train"),
    }


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, markup=False)
    chosen = report["selected"]
    console.print(f"backend: {report['backend']}  ({report['reason']})", style="bold")
    details = Table(show_header=False, box=None, pad_edge=False)
    for key in ("device_name", "device_count", "precisions", "dist_backend", "deepspeed_accelerator",
                "visible_devices_env"):  # fmt: skip
        value = chosen.get(key)
        details.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    peaks = ", ".join(
        (f"{precision} {value:.3g}" if value is not None else f"{precision} unknown")
        + (f" [{describe_origin(report['peak_origin'][precision])}]" if precision in report["peak_origin"] else "")
        for precision, value in chosen.get("peak_tflops", {}).items()
    )
    details.add_row("peak TFLOP/s", peaks)
    console.print(details)

    backends = Table(title="backends", title_justify="left")
    backends.add_column("device")
    backends.add_column("available")
    backends.add_column("why not", overflow="fold")
    for info in report["backends"]:
        backends.add_row(info["name"], "yes" if info["available"] else "no", info["reason"])
    console.print(backends)

    patches = Table(title="patches (llama, train; LLAMA_HW_PATCHES)", title_justify="left")
    patches.add_column("patch")
    patches.add_column("status")
    patches.add_column("replaces / why not", overflow="fold")
    for patch in report["patches"]:
        applies = patch["status"] == "applies"
        patches.add_row(patch["name"], patch["status"], patch["replaces"] if applies else patch["reason"])
    console.print(patches)

    table = Table(title="versions", title_justify="left")
    table.add_column("package")
    table.add_column("version")
    for name, version in report["versions"].items():
        table.add_row(name, version or "-")
    console.print(table)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, like every llama_hw error
        raise UsageError(f"{message} (see `llama-hw env --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llama-hw env", description=__doc__, allow_abbrev=False)
    parser.add_argument("--device", default=None, help=f"cpu, cuda, npu or {AUTO} (default: LLAMA_HW_DEVICE or auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    parser.add_argument("--probe", action="store_true", help="CPU: run the GEMM peak probe again even if one is "
                        "cached; the cache keeps it if the machine was quiet or it beats the cached figure")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = collect(args.device, reprobe=args.probe)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        render(report)
    return 0


if __name__ == "__main__":
    from llama_hw.errors import run_cli

    raise SystemExit(run_cli(main))
