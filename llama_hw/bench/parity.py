"""`bench parity`: do two runs' loss curves agree ("accuracy alignment" before trusting a port)?

The runs must have trained on the same batches from the same initial weights (same seed, model, data,
batch sizes; `bench run` uses data order by default), e.g. one on a GPU and one on an NPU. The verdict
compares the per-step losses over the steps both logged: the largest relative deviation
|loss_B - loss_A| / |loss_A| must stay within --rtol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_hw.bench.compare import save_figure
from llama_hw.errors import UsageError

DEFAULT_RTOL = 0.02


@dataclass(frozen=True)
class Parity:
    name_a: str
    name_b: str
    steps: int
    max_relative_deviation: float
    mean_relative_deviation: float
    worst_step: int  # 1-based
    rtol: float

    @property
    def passed(self) -> bool:
        return self.max_relative_deviation <= self.rtol

    def render(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}: loss of {self.name_b!r} vs {self.name_a!r} over {self.steps} steps: max relative "
            f"deviation {self.max_relative_deviation:.2e} (step {self.worst_step}), mean "
            f"{self.mean_relative_deviation:.2e}, rtol {self.rtol:g}"
        )


def relative_deviations(reference: list[float], other: list[float]) -> list[float]:
    """|other - reference| / |reference| per step over the common steps (absolute where the reference is 0)."""
    return [abs(b - a) / abs(a) if a else abs(b - a) for a, b in zip(reference, other)]


def compare_losses(a: dict[str, Any], b: dict[str, Any], rtol: float = DEFAULT_RTOL) -> Parity:
    if rtol < 0:
        raise UsageError(f"--rtol must be 0 or more, got {rtol}")
    steps = min(len(a["losses"]), len(b["losses"]))
    if steps == 0:
        raise UsageError(f"run {a['name'] if not a['losses'] else b['name']!r} logged no loss to compare")
    deviations = relative_deviations(a["losses"], b["losses"])
    worst = max(range(steps), key=deviations.__getitem__)
    return Parity(a["name"], b["name"], steps, deviations[worst], sum(deviations) / steps, worst + 1, rtol)


def pick_run(records: list[dict[str, Any]], name: str | None, path: Path) -> dict[str, Any]:
    """The last run in a results file, or the last one called `name`."""
    if name is None:
        return records[-1]
    matching = [record for record in records if record["name"] == name]
    if not matching:
        raise UsageError(f"{path} has no run named {name!r}; it has: {', '.join(sorted({r['name'] for r in records}))}")
    return matching[-1]


def loss_plot(a: dict[str, Any], b: dict[str, Any], result: Parity, path: Path) -> None:
    """Both loss curves overlaid, and their relative deviation per step against the tolerance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, deviation) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                               gridspec_kw={"height_ratios": [3, 1.4]})  # fmt: skip
    for run, style in ((a, "-"), (b, "--")):
        curves.plot(range(1, len(run["losses"]) + 1), run["losses"], style, label=run["name"])
    curves.set_ylabel("loss")
    curves.legend(fontsize=8)
    curves.set_title(result.render(), fontsize=8)
    deviation.plot(range(1, result.steps + 1), relative_deviations(a["losses"], b["losses"]), color="#d62728")
    deviation.axhline(result.rtol, color="black", linewidth=0.8, linestyle=":", label=f"rtol {result.rtol:g}")
    deviation.set_ylabel("relative deviation")
    deviation.set_xlabel("step")
    deviation.legend(fontsize=8)
    save_figure(figure, path)
