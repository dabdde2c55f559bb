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
from llama_hw.bench.stability import SPREAD_WARNING
from llama_hw.env import describe_origin

# 2: `mfu` is executed-work MFU and `model_flops_utilization` model FLOPs (1 had `mfu` over processed
# tokens and `mfu_effective`, both counting work that patches skip); `work`, `peak_source`, `rate_stability`.
# 3: `model_flops_utilization` charges the head at the trained positions and attention as causal triangles,
# the least a correct implementation computes (2 charged every real token's head row and the n x n square).
SCHEMA_VERSION = 3
REQUIRED_KEYS = (
    "name", "device", "tokens_per_s_per_device", "mfu", "model_flops_utilization", "step_time_s", "first_step_s",
    "peak_memory_bytes", "losses", "config", "versions",
)  # fmt: skip
SCHEMA_1_KEYS = tuple(key if key != "model_flops_utilization" else "mfu_effective" for key in REQUIRED_KEYS)
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


def warnings_for(measurement: Measurement, host: dict[str, Any], peak: dict[str, Any]) -> list[str]:
    """What makes this run's numbers less trustworthy than they look."""
    from llama_hw.backends.cpu import quiet_load_limit

    found = []
    times = measurement.step_time_percentiles()
    if times["spread"] is not None and times["spread"] > SPREAD_WARNING:
        found.append(f"step times spread {100 * times['spread']:.0f} % ((p90 - p10) / p50 > "
                     f"{100 * SPREAD_WARNING:.0f} %): another job, data-dependent steps or too few steps")  # fmt: skip
    limit = quiet_load_limit()
    start, end = host.get("load_average_1m_at_start"), host.get("load_average_1m_at_end")
    own = host.get("torch_threads") or 1  # this run's own threads are in the load at its end
    if start is not None and start >= limit:
        found.append(f"the machine was busy before the run (1-minute load {start:.2f} >= {limit:.2f})")
    elif end is not None and end >= own + limit:
        found.append(f"the machine was busy during the run (1-minute load {end:.2f} at the end, with this run's "
                     f"{own} threads)")  # fmt: skip
    if peak.get("source") == "probe" and not peak.get("quiet"):
        found.append("the peak was probed on a busy machine: MFU reads high (set LLAMA_HW_PEAK_TFLOPS or run "
                     "`llama-hw env --probe` on a quiet machine)")  # fmt: skip
    if measurement.stop_reason.startswith(("--max-steps", "time limit")) and "CI" in measurement.stop_reason:
        found.append(f"not stable: {measurement.stop_reason}")
    return found


def build_record(session, measurement: Measurement) -> dict[str, Any]:
    """The JSON object of a finished run (see REQUIRED_KEYS)."""
    from llama_hw.env import versions

    spec, backend = session.spec, session.backend
    counts = measurement.counts
    seconds = measurement.measured_seconds
    flops, layout = session.flops, session.layout
    executed = flops.executed(counts, layout.head_labelled_only)
    model_flops = flops.model_flops(counts)
    peak = session.peak.get("tflops") if session.peak else backend.peak_tflops(session.precision)
    world = measurement.world_size
    per_step = 1 / max(1, len(measurement.measured)) / world  # totals -> per device and measured step
    host = host_description(session.load_average_at_start)
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
        "mfu": mfu(executed / seconds / world, peak),
        "model_flops_utilization": mfu(model_flops / seconds / world, peak),
        # the schema-1 name of the nearest figure, kept for scripts that read it: model_flops_utilization
        "mfu_effective": mfu(model_flops / seconds / world, peak),
        "peak_tflops": peak,
        "peak_source": session.peak or {"tflops": peak, "source": "table"},
        "work": {
            "attention_layout": layout.attention,
            "head_rows": "labelled" if layout.head_labelled_only else "all",
            "decided_by": layout.why,
            "flops_per_device_step": executed * per_step,
            "attention_flops_per_device_step": flops.attention(counts) * per_step,
            "head_rows_per_device_step": flops.head_rows(counts, layout.head_labelled_only) * per_step,
            "model_flops_per_device_step": model_flops * per_step,
        },
        "model_flops_per_token": model_flops / counts.effective if counts.effective else None,
        "step_time_s": measurement.step_time_percentiles(),
        "step_times_s": [step.seconds for step in measurement.measured],
        "rate_stability": measurement.rate_stability(),
        "stop_reason": measurement.stop_reason,
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
        "host": host,
        "git": git_commit(),
        "warnings": warnings_for(measurement, host, session.peak or {}),
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
        schema_1 = isinstance(record, dict) and record.get("schema", 1) == 1 and "mfu_effective" in record
        missing = [key for key in (SCHEMA_1_KEYS if schema_1 else REQUIRED_KEYS) if key not in record]
        if not isinstance(record, dict) or missing:
            what = ", ".join(missing) if isinstance(record, dict) else "JSON object"
            raise DataError(f"{path}:{number}: not a `bench run` result (no {what})")
        records.append(upgrade(record, schema=1 if schema_1 else record.get("schema", SCHEMA_VERSION)))
    return records


def upgrade(record: dict[str, Any], schema: int) -> dict[str, Any]:
    """An older record, readable next to new ones: figures whose definition changed (see SCHEMA_VERSION) are
    dropped rather than shown beside today's under the same name; the old values stay under `schema_N_...`."""
    if schema >= SCHEMA_VERSION:
        return record
    record = dict(record)
    if schema == 1:
        record.update(mfu=None, model_flops_utilization=None, schema_1_mfu=record.get("mfu"))
    else:
        record.update(model_flops_utilization=None,
                      schema_2_model_flops_utilization=record.get("model_flops_utilization"))  # fmt: skip
    return record


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
        f"  MFU {percent(record['mfu'])} of the work executed, model FLOPs utilisation "
        f"{percent(record['model_flops_utilization'])} (the work the text and loss need), of "
        + (f"{record['peak_tflops']:.3g} TFLOP/s peak" if record["peak_tflops"] else "an unknown peak")
        + f" [{describe_origin(record['peak_source'])}]",
        f"  work per device and step: {record['work']['flops_per_device_step'] / 1e12:.4g} TFLOP, attention "
        f"{record['work']['attention_flops_per_device_step'] / 1e12:.4g} TFLOP ({record['work']['attention_layout']}), "
        f"head on {record['work']['head_rows_per_device_step']:,.0f} rows ({record['work']['head_rows']})",
        f"  step {steps['p50']:.3f} s p50, {steps['p90']:.3f} s p90, spread {percent(steps['spread'])} over "
        f"{record['measured_steps']} steps ({record['stop_reason'] or 'max steps'}); "
        f"first step {record['first_step_s']:.3f} s",
        stability_line(record["rate_stability"]),
        f"  peak memory {gib(record['peak_memory_bytes'])} per device, host RSS {gib(record['host_rss_peak_bytes'])}",
        f"  loss {record['losses'][0]:.4f} -> {record['losses'][-1]:.4f}" if record["losses"] else "  loss: none logged",
        f"  patches: {', '.join(record['patches']) or 'none'}",
        *(f"  warning: {warning}" for warning in record.get("warnings", [])),
    ]
    return "\n".join(lines)


def stability_line(stability: dict[str, Any]) -> str:
    if stability.get("ci95_low") is None:
        return "  median effective tokens/s: too few steps for a 95 % interval"
    return (f"  median effective tokens/s/device {stability['median']:,.0f}, 95 % interval "
            f"{stability['ci95_low']:,.0f}..{stability['ci95_high']:,.0f} "
            f"(+-{100 * stability['ci95_half_width_relative']:.1f} %)")  # fmt: skip
