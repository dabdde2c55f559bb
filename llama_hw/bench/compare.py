"""`bench compare`: runs side by side, as the Ascend port's table was, with what it left out.

Rows are runs of one name and one configuration; several runs of both (repeats on a busy machine) become one
row of their medians, with the number of runs. Runs that share a name but differ in configuration (seed,
sequence length, micro batch, padding, data, patches, ...) stay apart: "NAME [2]", with a note naming the
fields. "tokens/s/p" is effective tokens (no padding) per second per device; "MFU" is executed-work MFU
(the FLOPs the kernels ran, llama_hw/bench/work.py) and "model FLOPs" the utilisation by the work the
text and loss need (llama_hw/bench/flops.py); "attention" and "head rows" are the executed attention
TFLOP and the head's rows per device and step, where a patch's saving shows. The processed rate, which counts padding as the
Ascend port's numbers did, has its own column. Records of schema 1 (before executed-work accounting) show
no MFU: theirs counted work that patches skip.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_hw.bench.results import gib, percent
from llama_hw.errors import UsageError

# configuration fields that make two runs measure different things (`bench run`'s BenchSpec and the record)
CONFIG_FIELDS = ("model", "overrides", "seq_len", "micro_batch", "grad_accum", "padding", "data_path",
                 "lengths_from", "template", "finetuning_type", "zero", "precision", "patches",
                 "gradient_checkpointing", "sampling", "learning_rate", "seed", "world_size")  # fmt: skip


@dataclass
class Row:
    name: str
    runs: int
    device: str
    effective: float
    processed: float
    mfu: float | None
    model_flops_utilization: float | None
    attention_tflop: float | None
    head_rows: float | None
    memory: float
    zero: int

    def ratio_to(self, baseline: Row) -> float:
        return self.effective / baseline.effective if baseline.effective else float("nan")


def _median(values: list[Any]) -> Any:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def configuration(record: dict[str, Any]) -> dict[str, Any]:
    """What a run measured, beyond its name: config fields, the patches applied, the device."""
    config = record.get("config", {})
    found = {key: config.get(key) for key in CONFIG_FIELDS if key in config}
    if "patches" in record:
        found["patches applied"] = record["patches"]
    found["device"] = record["device"].get("product"), record["device"].get("count")
    return found


def differing_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [key for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]


def _work(run: dict[str, Any], key: str) -> Any:
    return (run.get("work") or {}).get(key)


def rows_by_config(records: list[dict[str, Any]]) -> tuple[list[Row], list[str]]:
    """One row per run name and configuration, in first-seen order, holding the medians of its runs; and
    notes naming the fields in which runs of one name differ."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    configs: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        config = configuration(record)
        key = json.dumps(config, sort_keys=True, default=str)
        seen = configs.setdefault(record["name"], [])
        if config not in seen:
            seen.append(config)
        groups.setdefault((record["name"], key), []).append(record)
    notes = []
    for name, seen in configs.items():
        if len(seen) > 1:
            fields = sorted({field for other in seen[1:] for field in differing_fields(seen[0], other)})
            notes.append(f"{len(seen)} configurations share the name {name!r} (they differ in "
                         f"{', '.join(fields)}): shown as {name!r}, {name + ' [2]'!r}, ...")  # fmt: skip
    rows, numbers = [], {name: 0 for name in configs}
    for (name, _), runs in groups.items():
        numbers[name] += 1
        device = runs[0]["device"]
        rows.append(Row(
            name=name if numbers[name] == 1 else f"{name} [{numbers[name]}]",
            runs=len(runs),
            device=f"{device['product']} x{device['count']}",
            effective=_median([run["tokens_per_s_per_device"]["effective"] for run in runs]),
            processed=_median([run["tokens_per_s_per_device"]["processed"] for run in runs]),
            mfu=_median([run.get("mfu") for run in runs]),
            model_flops_utilization=_median([run.get("model_flops_utilization") for run in runs]),
            attention_tflop=_median([_work(run, "attention_flops_per_device_step") for run in runs]),
            head_rows=_median([_work(run, "head_rows_per_device_step") for run in runs]),
            memory=_median([run["peak_memory_bytes"] for run in runs]),
            zero=int(runs[0]["config"].get("zero", 0)),
        ))  # fmt: skip
    return rows, notes


def rows_by_name(records: list[dict[str, Any]]) -> list[Row]:
    return rows_by_config(records)[0]


def pick_baseline(rows: list[Row], baseline: str | None) -> Row:
    if baseline is None:
        return rows[0]
    for row in rows:
        if row.name == baseline:
            return row
    raise UsageError(f"--baseline {baseline!r} is not a run name; the runs are: {', '.join(r.name for r in rows)}")


def markdown_table(rows: list[Row], baseline: Row) -> str:
    lines = [
        "| NAME | tokens/s/p | MFU | memory | ZeRO | ratio to baseline | processed tokens/s/p | model FLOPs "
        "| attention TFLOP/step | head rows/step | device | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        attention = "-" if row.attention_tflop is None else f"{row.attention_tflop / 1e12:.4g}"
        head = "-" if row.head_rows is None else f"{row.head_rows:,.0f}"
        lines.append(
            f"| {row.name} | {row.effective:,.0f} | {percent(row.mfu)} | {gib(row.memory)} | {row.zero} | "
            f"{row.ratio_to(baseline):.2f}x | {row.processed:,.0f} | {percent(row.model_flops_utilization)} | "
            f"{attention} | {head} | {row.device} | {row.runs} |"
        )
    return "\n".join(lines)


def bar_chart(rows: list[Row], baseline: Row, path: Path) -> None:
    """Effective and processed tokens/s/device per run, the ratio to the baseline written on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6.0, 1.4 * len(rows) + 2), 4.5))
    positions = range(len(rows))
    axes.bar([p - 0.2 for p in positions], [r.processed for r in rows], width=0.4, color="#c7c7c7",
             label="processed (incl. padding)")  # fmt: skip
    bars = axes.bar([p + 0.2 for p in positions], [r.effective for r in rows], width=0.4, color="#1f77b4",
                    label="effective (no padding)")  # fmt: skip
    for bar, row in zip(bars, rows):
        axes.annotate(f"{row.ratio_to(baseline):.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=8)  # fmt: skip
    axes.set_xticks(list(positions), [r.name for r in rows], rotation=20, ha="right", fontsize=8)
    axes.set_ylabel("tokens / s / device")
    axes.set_title(f"ratio of effective tokens/s to {baseline.name}", fontsize=9)
    axes.legend(fontsize=8)
    save_figure(figure, path)


def save_figure(figure, path: Path) -> None:
    """Write the PNG next to its place and move it in: a failed run never leaves half a file."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        figure.savefig(partial, dpi=120, format="png")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
        plt.close(figure)
