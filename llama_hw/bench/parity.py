"""`bench parity`: do two runs' loss curves agree ("accuracy alignment" before trusting a port)?

The runs must have trained on the same batches from the same initial weights (same seed, model, data,
data order, padding, batch sizes; `bench run` uses data order by default), e.g. one on a GPU and one on
an NPU. What may differ is what parity is about: device, precision, parallelism, patches. Runs whose
configuration differs in anything else FAIL, naming the fields, unless `--allow-differences` lists them.

The verdict measures the deviation in units of what training changed: per step, |loss_B - loss_A|
divided by the reference run's loss drop (its first loss minus its lowest). A deviation relative to the
loss itself means nothing early in training: random-weight losses sit near ln(vocab) ~ 10.4, so two
different seeds deviate by under 2 % and passed. Relative to the drop, a run that follows another's
trajectory stays near 0 and one that learns differently reaches the order of 1. The tolerance (default
0.05: within 5 % of the loss drop at every step) is a fraction of that drop; a reference whose loss did
not fall gives no scale, and the verdict says so instead of passing.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_hw.bench.compare import save_figure
from llama_hw.errors import UsageError

DEFAULT_TOLERANCE = 0.05
# what a parity check compares across: these may differ between the two runs
MAY_DIFFER = ("device", "precision", "zero", "patches", "patches applied", "world_size")
# configuration fields that decide which batches from which weights: these must not differ
MUST_MATCH = ("model", "overrides", "seq_len", "micro_batch", "grad_accum", "global_batch", "padding",
              "data_path", "lengths_from", "template", "finetuning_type", "gradient_checkpointing", "sampling",
              "learning_rate", "seed")  # fmt: skip


@dataclass(frozen=True)
class Parity:
    name_a: str
    name_b: str
    steps: int
    loss_drop: float  # the reference run's first loss minus its lowest
    max_deviation: float  # max over steps of |loss_B - loss_A| / loss_drop (inf when loss_drop <= 0)
    mean_deviation: float
    worst_step: int  # 1-based
    tolerance: float
    differences: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # refused configuration differences
    allowed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # differences the user allowed

    @property
    def passed(self) -> bool:
        return not self.differences and self.loss_drop > 0 and self.max_deviation <= self.tolerance

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def render(self) -> str:
        head = f"{self.verdict}: loss of {self.name_b!r} vs {self.name_a!r} over {self.steps} steps"
        if self.differences:
            fields = ", ".join(f"{key} {a!r} vs {b!r}" for key, (a, b) in self.differences.items())
            return (f"{head}: the configurations differ ({fields}), so the runs did not train on the same batches "
                    "from the same weights; rerun one with the other's settings, or pass --allow-differences "
                    f"{','.join(self.differences)} to compare them anyway")  # fmt: skip
        if self.loss_drop <= 0:
            return (f"{head}: the reference loss did not fall (drop {self.loss_drop:.3g}), so there is no scale to "
                    "judge deviations by; train more steps or with a higher --learning-rate")  # fmt: skip
        text = (f"{head}: max deviation {self.max_deviation:.2e} of the loss drop {self.loss_drop:.4g} "
                f"(step {self.worst_step}), mean {self.mean_deviation:.2e}, tolerance {self.tolerance:g}")
        if self.allowed:
            text += "; allowed differences: " + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in self.allowed.items())
        return text


def _comparable(config: dict[str, Any], key: str) -> Any:
    value = config.get(key)
    if key in ("data_path", "lengths_from", "model") and isinstance(value, str):
        return Path(value).name  # the same file lives at different paths on a GPU and an NPU machine
    return value


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The MUST_MATCH fields in which two records' configurations differ (files compared by name)."""
    config_a, config_b = a.get("config", {}), b.get("config", {})
    return {key: (_comparable(config_a, key), _comparable(config_b, key)) for key in MUST_MATCH
            if _comparable(config_a, key) != _comparable(config_b, key)}  # fmt: skip


def deviations(reference: list[float], other: list[float], drop: float) -> list[float]:
    """|other - reference| / drop per step over the common steps."""
    return [abs(b - a) / drop if drop > 0 else float("inf") for a, b in zip(reference, other)]


def compare_losses(a: dict[str, Any], b: dict[str, Any], tolerance: float = DEFAULT_TOLERANCE,
                   allowed: set[str] = frozenset()) -> Parity:  # fmt: skip
    if tolerance < 0:
        raise UsageError(f"--tolerance must be 0 or more, got {tolerance}")
    unknown = sorted(set(allowed) - set(MUST_MATCH))
    if unknown:
        raise UsageError(f"--allow-differences {','.join(unknown)}: not a configuration field; choose from "
                         f"{', '.join(MUST_MATCH)}")  # fmt: skip
    steps = min(len(a["losses"]), len(b["losses"]))
    if steps == 0:
        raise UsageError(f"run {a['name'] if not a['losses'] else b['name']!r} logged no loss to compare")
    found = config_differences(a, b)
    refused = {key: value for key, value in found.items() if key not in allowed}
    permitted = {key: value for key, value in found.items() if key in allowed}
    reference = a["losses"][:steps]
    drop = reference[0] - min(reference)
    per_step = deviations(reference, b["losses"], drop)
    worst = max(range(steps), key=per_step.__getitem__)
    return Parity(a["name"], b["name"], steps, drop, per_step[worst], sum(per_step) / steps, worst + 1, tolerance,
                  refused, permitted)  # fmt: skip


def pick_run(records: list[dict[str, Any]], name: str | None, path: Path) -> dict[str, Any]:
    """The last run in a results file, or the last one called `name`."""
    if name is None:
        return records[-1]
    matching = [record for record in records if record["name"] == name]
    if not matching:
        raise UsageError(f"{path} has no run named {name!r}; it has: {', '.join(sorted({r['name'] for r in records}))}")
    return matching[-1]


def loss_plot(a: dict[str, Any], b: dict[str, Any], result: Parity, path: Path) -> None:
    """Both loss curves overlaid, and their deviation per step against the tolerance; the verdict on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, deviation) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                               gridspec_kw={"height_ratios": [3, 1.4]})  # fmt: skip
    colour = "#2ca02c" if result.passed else "#d62728"
    figure.suptitle(result.verdict, color=colour, fontsize=16, fontweight="bold")
    # the whole sentence, wrapped: a one-line title is cut off at the figure's edge
    curves.set_title("\n".join(textwrap.wrap(result.render(), 110)), fontsize=7, loc="left")
    for run, style in ((a, "-"), (b, "--")):
        curves.plot(range(1, len(run["losses"]) + 1), run["losses"], style, label=run["name"])
    curves.set_ylabel("loss")
    curves.legend(fontsize=7)
    if result.loss_drop > 0:
        deviation.plot(range(1, result.steps + 1), deviations(a["losses"], b["losses"], result.loss_drop),
                       color=colour)  # fmt: skip
        deviation.axhline(result.tolerance, color="black", linewidth=0.8, linestyle=":",
                          label=f"tolerance {result.tolerance:g}")  # fmt: skip
        deviation.legend(fontsize=8)
    deviation.set_ylabel("|deviation| / loss drop")
    deviation.set_xlabel("step")
    save_figure(figure, path)
