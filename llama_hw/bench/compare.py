"""`bench compare`: runs side by side, as the Ascend port's table was, with what it left out.

Rows are run names; several runs with the same name (repeats on a busy machine) become one row of their
medians, with the number of runs. "tokens/s/p" is effective tokens (no padding) per second per device and
"MFU" is `mfu_effective`, the FLOPs of that text: padding is not work, and with runtime patches that skip
it (CPU varlen attention, the head at labelled positions) the processed MFU can even pass 100 %. The
processed rate, which counts padding as the Ascend port's numbers did, has its own column.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_hw.bench.results import gib, percent
from llama_hw.errors import UsageError


@dataclass
class Row:
    name: str
    runs: int
    device: str
    effective: float
    processed: float
    mfu: float | None
    memory: float
    zero: int

    def ratio_to(self, baseline: Row) -> float:
        return self.effective / baseline.effective if baseline.effective else float("nan")


def _median(values: list[Any]) -> Any:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def rows_by_name(records: list[dict[str, Any]]) -> list[Row]:
    """One row per run name, in first-seen order, holding the medians of its runs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["name"], []).append(record)
    rows = []
    for name, runs in groups.items():
        device = runs[0]["device"]
        rows.append(Row(
            name=name,
            runs=len(runs),
            device=f"{device['product']} x{device['count']}",
            effective=_median([run["tokens_per_s_per_device"]["effective"] for run in runs]),
            processed=_median([run["tokens_per_s_per_device"]["processed"] for run in runs]),
            mfu=_median([run["mfu_effective"] for run in runs]),
            memory=_median([run["peak_memory_bytes"] for run in runs]),
            zero=int(runs[0]["config"].get("zero", 0)),
        ))  # fmt: skip
    return rows


def pick_baseline(rows: list[Row], baseline: str | None) -> Row:
    if baseline is None:
        return rows[0]
    for row in rows:
        if row.name == baseline:
            return row
    raise UsageError(f"--baseline {baseline!r} is not a run name; the runs are: {', '.join(r.name for r in rows)}")


def markdown_table(rows: list[Row], baseline: Row) -> str:
    lines = [
        "| NAME | tokens/s/p | MFU | memory | ZeRO | ratio to baseline | processed tokens/s/p | device | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.effective:,.0f} | {percent(row.mfu)} | {gib(row.memory)} | {row.zero} | "
            f"{row.ratio_to(baseline):.2f}x | {row.processed:,.0f} | {row.device} | {row.runs} |"
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
