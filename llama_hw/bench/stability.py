"""When a benchmark has measured enough: a distribution-free confidence interval of the median, and the stop rule.

A step's rate varies with its batch (dynamic padding) and with whatever else the machine runs, and a few
slow steps (a garbage collection, another job) move a mean but not a median. So `bench run` measures
until the 95 % confidence interval of the median per-step effective tokens/s is within +-`ci_bound` of
it (default 5 %), after at least `min_steps` and at most `max_steps` steps or `time_limit_s` seconds.
The interval comes from order statistics (the binomial distribution of how many samples fall below the
median), so it assumes nothing about the shape of the distribution; it needs 6 samples to exist at 95 %.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95
SPREAD_WARNING = 0.25  # (p90 - p10) / p50 above this: the steps differ too much for one number to describe them


def _binomial_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_ci(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The order-statistic interval [x_(j), x_(n+1-j)] covering the median with at least `confidence`; None
    when there are too few values for one (fewer than 6 at 95 %)."""
    n = len(values)
    ordered = sorted(values)
    alpha = (1 - confidence) / 2
    j = 0  # the largest j with P(X <= j - 1) <= alpha: x_(j) is then below the median with probability >= 1 - alpha
    while j + 1 <= n // 2 and _binomial_cdf(j, n) <= alpha:
        j += 1
    if j == 0:
        return None
    return ordered[j - 1], ordered[n - j]


def relative_half_width(values: list[float], confidence: float = CONFIDENCE) -> float | None:
    interval = median_ci(values, confidence)
    if interval is None:
        return None
    middle = statistics.median(values)
    return (interval[1] - interval[0]) / 2 / middle if middle else math.inf


def spread(values: list[float]) -> float | None:
    """(p90 - p10) / p50: 0 for identical steps; None for fewer than 2."""
    if len(values) < 2:
        return None
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    middle = statistics.median(values)
    return (deciles[8] - deciles[0]) / middle if middle else None


@dataclass(frozen=True)
class StopRule:
    """Measure until the median's CI is within +-ci_bound, or a fixed count when `fixed` is set."""

    min_steps: int = 8
    max_steps: int = 60
    ci_bound: float = 0.05
    time_limit_s: float = 600.0
    fixed: int | None = None  # --steps N: exactly N measured steps

    @property
    def most_steps(self) -> int:
        return self.fixed if self.fixed is not None else self.max_steps

    def done(self, rates: list[float], seconds: float) -> str | None:
        """Why measuring can stop after these per-step rates (None: go on)."""
        n = len(rates)
        if self.fixed is not None:
            return f"{n} steps as asked (--steps)" if n >= self.fixed else None
        if n >= self.max_steps:
            width = relative_half_width(rates)
            return f"--max-steps {self.max_steps} reached" + (
                f" (median CI +-{100 * width:.1f} %, above the +-{100 * self.ci_bound:g} % bound)"
                if width is not None and width > self.ci_bound else "")  # fmt: skip
        if n < self.min_steps:
            return None
        width = relative_half_width(rates)
        if width is not None and width <= self.ci_bound:
            return f"median CI +-{100 * width:.1f} % <= +-{100 * self.ci_bound:g} % after {n} steps"
        if seconds >= self.time_limit_s:
            return f"time limit {self.time_limit_s:g} s reached after {n} steps" + (
                "" if width is None else f" (median CI +-{100 * width:.1f} %)")
        return None
