"""The measuring callback: step times, token counts, losses and memory of a transformers Trainer run.

A step's time runs from the end of the previous step to the end of this one, the device synchronized at
both ends, so it holds everything a step costs (data loading and collation, forward, backward, clipping,
optimizer, logging); the first step is timed from the start of training and reported apart (graph
compilation, allocator warm-up). Token counts come from a forward pre-hook on the model (`TokenCounter`).
Measuring stops by a `StopRule` (llama_hw/bench/stability.py): a fixed count, or once the median rate is
known well enough; the meter then sets Trainer's `should_training_stop` (rank 0 decides for all ranks).
The loss of every step is the one Trainer logs (`logging_steps=1`), already averaged over the ranks.
Under torch.distributed the per-step times are reduced with MAX (a step ends when the slowest rank ends)
and the counts with SUM, then reported per device.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from llama_hw.bench.stability import StopRule, median_ci, spread
from llama_hw.bench.tokens import TokenCounter, TokenCounts


@dataclass
class Step:
    seconds: float
    counts: TokenCounts


@dataclass
class Measurement:
    """What a run measured, already combined over the ranks (counts are totals over all devices)."""

    world_size: int
    warmup: int
    steps: list[Step]  # every step, warm-up included
    losses: list[float]
    peak_memory_bytes: int  # the largest over the devices
    host_rss_peak_bytes: int
    stop_reason: str = ""

    @property
    def measured(self) -> list[Step]:
        return self.steps[self.warmup:] if len(self.steps) > self.warmup else self.steps[-1:]

    @property
    def first_step_s(self) -> float:
        return self.steps[0].seconds

    @property
    def measured_seconds(self) -> float:
        return sum(step.seconds for step in self.measured)

    @property
    def counts(self) -> TokenCounts:
        total = TokenCounts()
        for step in self.measured:
            total = total + step.counts
        return total

    def per_device_rate(self, value: float) -> float:
        return value / self.measured_seconds / self.world_size

    def step_time_percentiles(self) -> dict[str, float]:
        times = sorted(step.seconds for step in self.measured)
        if len(times) == 1:
            p10 = p50 = p90 = times[0]
        else:
            deciles = statistics.quantiles(times, n=10, method="inclusive")
            p10, p50, p90 = deciles[0], statistics.median(times), deciles[8]
        return {"p10": p10, "p50": p50, "p90": p90, "mean": statistics.fmean(times), "min": times[0],
                "max": times[-1], "spread": spread(times)}  # fmt: skip

    def step_rates(self) -> list[float]:
        """Effective tokens/s/device of each measured step."""
        return [step.counts.effective / step.seconds / self.world_size for step in self.measured if step.seconds > 0]

    def rate_stability(self) -> dict[str, float | None]:
        """The median per-step effective rate, its 95 % interval, and the spread of the rates."""
        rates = self.step_rates()
        interval = median_ci(rates) if rates else None
        middle = statistics.median(rates) if rates else None
        return {
            "median": middle,
            "ci95_low": interval[0] if interval else None,
            "ci95_high": interval[1] if interval else None,
            "ci95_half_width_relative": (interval[1] - interval[0]) / 2 / middle if interval and middle else None,
            "spread": spread(rates),
        }


def host_rss_peak_bytes() -> int:
    """This process's resident-set high-water mark."""
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class BenchMeter(TrainerCallback):
    """Times every optimizer step of a Trainer run and collects counts, losses and peak memory."""

    def __init__(self, backend, counter: TokenCounter, warmup: int, rule: StopRule, progress: bool = True):
        self.backend, self.counter = backend, counter
        self.warmup, self.rule, self.progress = warmup, rule, progress
        self.total_steps = warmup + rule.most_steps
        self.stop_reason = ""
        self.steps: list[Step] = []
        self.losses: list[float] = []
        self.measurement: Measurement | None = None
        self._last = 0.0
        self._bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.backend.synchronize()
        self.backend.reset_peak_memory()
        if self.progress and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_steps, desc=phase(0, self.warmup), unit="step")
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.backend.synchronize()
        now = time.perf_counter()
        step = Step(now - self._last, self.counter.take())
        self._last = now
        self.steps.append(step)
        if self._bar is not None:
            self._bar.set_description(phase(len(self.steps), self.warmup))
            self._bar.set_postfix_str(f"{step.counts.effective / step.seconds:,.0f} effective tok/s (this process)")
            self._bar.update()
        if len(self.steps) > self.warmup and self.should_stop(args.device):
            control.should_training_stop = True

    def should_stop(self, device) -> bool:
        """The stop rule on this rank's measured steps; under torch.distributed rank 0's answer for all."""
        import torch.distributed as dist

        measured = self.steps[self.warmup:]
        rates = [step.counts.effective / step.seconds for step in measured if step.seconds > 0]
        reason = self.rule.done(rates, sum(step.seconds for step in measured)) or ""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            decision = torch.tensor([1 if reason else 0], dtype=torch.int64, device=device)
            dist.broadcast(decision, src=0)
            reason = reason or ("rank 0 stopped" if int(decision.item()) else "")
            if not int(decision.item()):
                reason = ""
        self.stop_reason = reason
        return bool(reason)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def on_train_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.close()
        self.measurement = combine_ranks(self, args.device)


def combine_ranks(meter: BenchMeter, device: torch.device) -> Measurement:
    """The meter's records, with times MAX-reduced and counts SUM-reduced over the ranks."""
    import torch.distributed as dist

    times = [step.seconds for step in meter.steps]
    counts = [step.counts.as_list() for step in meter.steps]
    memory = [meter.backend.memory_stats().peak_allocated_bytes, host_rss_peak_bytes()]
    world_size = 1
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world_size = dist.get_world_size()
        times_tensor = torch.tensor(times, dtype=torch.float32, device=device)  # not every collective library has fp64
        counts_tensor = torch.tensor(counts, dtype=torch.int64, device=device)
        memory_tensor = torch.tensor(memory, dtype=torch.int64, device=device)
        dist.all_reduce(times_tensor, op=dist.ReduceOp.MAX)
        dist.all_reduce(counts_tensor, op=dist.ReduceOp.SUM)
        dist.all_reduce(memory_tensor, op=dist.ReduceOp.MAX)
        times, counts, memory = times_tensor.tolist(), counts_tensor.tolist(), memory_tensor.tolist()
    steps = [Step(seconds, TokenCounts.from_list(values)) for seconds, values in zip(times, counts)]
    return Measurement(world_size, meter.warmup, steps, list(meter.losses), int(memory[0]), int(memory[1]),
                       meter.stop_reason)  # fmt: skip


def phase(done: int, warmup: int) -> str:
    """What the progress bar says after `done` steps: the phase of the last step finished."""
    if warmup and done <= warmup:
        return f"warm-up {done}/{warmup}"
    return "measuring"
