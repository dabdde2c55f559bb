"""One run's result: a JSON object with the numbers, the configuration and the environment.

Appended as one line to a JSONL results file (`bench compare` and `bench parity` read those), printed as
a short summary, or as the last line of stdout with `--json`. The keys scripts rely on are listed in
REQUIRED_KEYS and documented in the README (Benchmarks, "The JSON line").
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llama_hw.bench.flops import mfu
from llama_hw.bench.meter import Measurement

SCHEMA_VERSION = 1
REQUIRED_KEYS = (
    "name", "device", "tokens_per_s_per_device", "mfu", "mfu_effective", "step_time_s", "first_step_s",
    "peak_memory_bytes", "losses", "config", "versions",
)  # fmt: skip
RATE_KEYS = ("processed", "effective", "trained")


def git_commit(directory: Path | None = None) -> dict[str, Any]:
    """The commit of the llama_hw checkout that ran (and whether it had uncommitted changes), if it is one."""
    directory = directory or Path(__file__).resolve().parents[2]
    if not (directory / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                                capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def host_description(load_average_at_start: float | None = None) -> dict[str, Any]:
    import psutil
    import torch

    from llama_hw.backends.cpu import cpu_model_name

    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "torch_threads": torch.get_num_threads(),
        # other work on the machine skews the numbers: the 1-minute load before the run and at its end
        "load_average_1m_at_start": load_average_at_start,
        "load_average_1m_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def build_record(session, measurement: Measurement) -> dict[str, Any]:
    """The JSON object of a finished run (see REQUIRED_KEYS)."""
    from llama_hw.env import versions

    spec, backend = session.spec, session.backend
    counts = measurement.counts
    seconds = measurement.measured_seconds
    flops = session.flops
    processed_flops = flops.batch(counts.processed, counts.processed_squared, counts.trained)
    effective_flops = flops.batch(counts.effective, counts.effective_squared, counts.trained)
    peak = backend.peak_tflops(session.precision)
    world = measurement.world_size
    rates = {key: measurement.per_device_rate(getattr(counts, key)) for key in RATE_KEYS}
    config = asdict(spec)
    args = session.trainer.args  # what Trainer itself runs with: its world size is the data-parallel one
    config.update(overrides=asdict(spec.overrides), precision=session.precision, world_size=args.world_size,
                  global_batch=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
                  data=session.data.description)  # fmt: skip
    return {
        "schema": SCHEMA_VERSION,
        "name": session.name,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": {"backend": backend.name, "product": backend.device_name(), "count": world},
        "tokens_per_s_per_device": rates,
        "samples_per_s_per_device": measurement.per_device_rate(counts.samples),
        "mfu": mfu(processed_flops / seconds / world, peak),
        "mfu_effective": mfu(effective_flops / seconds / world, peak),
        "peak_tflops": peak,
        "model_flops_per_token": processed_flops / counts.processed if counts.processed else None,
        "step_time_s": measurement.step_time_percentiles(),
        "step_times_s": [step.seconds for step in measurement.measured],
        "first_step_s": measurement.first_step_s,
        "measured_steps": len(measurement.measured),
        "peak_memory_bytes": measurement.peak_memory_bytes,
        "host_rss_peak_bytes": measurement.host_rss_peak_bytes,
        "losses": measurement.losses,
        "tokens": {
            "processed": counts.processed,
            "effective": counts.effective,
            "trained": counts.trained,
            "padding_fraction": 1 - counts.effective / counts.processed if counts.processed else None,
        },
        "config": config,
        "model": {
            "shape": asdict(session.shape),
            "parameters": session.parameters.total,
            "trainable_parameters": session.parameters.trainable,
            "flops_per_token": {"body": flops.body, "head": flops.head,
                                "attention_per_context_position": flops.attention_coefficient},
        },
        "parallelism": session.parallelism.describe(),
        "patches": list(session.patch_report.applied),
        "versions": versions(),
        "host": host_description(session.load_average_at_start),
        "git": git_commit(),
    }


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one line; the line is written whole with one call (no half record on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    from llama_hw.errors import DataError, UsageError

    if not path.is_file():
        raise UsageError(f"results file {path} does not exist")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise DataError(f"{path}:{number}: not a JSON line ({err})") from None
        missing = [key for key in REQUIRED_KEYS if key not in record]
        if missing:
            raise DataError(f"{path}:{number}: not a `bench run` result (no {', '.join(missing)})")
        records.append(record)
    return records


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def summary(record: dict[str, Any]) -> str:
    rates = record["tokens_per_s_per_device"]
    steps = record["step_time_s"]
    tokens = record["tokens"]
    device = record["device"]
    lines = [
        f"{record['name']}: {device['product']} x{device['count']} ({device['backend']}), {record['parallelism']}",
        f"  tokens/s/device: {rates['effective']:,.0f} effective, {rates['processed']:,.0f} processed, "
        f"{rates['trained']:,.0f} trained ({percent(tokens['padding_fraction'])} padding); "
        f"{record['samples_per_s_per_device']:.2f} samples/s/device",
        f"  MFU {percent(record['mfu'])} (effective {percent(record['mfu_effective'])}) of "
        + (f"{record['peak_tflops']:.3g} TFLOP/s peak" if record["peak_tflops"] else "an unknown peak"),
        f"  step {steps['p50']:.3f} s p50, {steps['p90']:.3f} s p90 over {record['measured_steps']} steps; "
        f"first step {record['first_step_s']:.3f} s",
        f"  peak memory {gib(record['peak_memory_bytes'])} per device, host RSS {gib(record['host_rss_peak_bytes'])}",
        f"  loss {record['losses'][0]:.4f} -> {record['losses'][-1]:.4f}" if record["losses"] else "  loss: none logged",
        f"  patches: {', '.join(record['patches']) or 'none'}",
    ]
    return "\n".join(lines)
