"""Enumerate the configurations a user chooses among, estimate each, and recommend the fastest that fits."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llama_hw.plan.job import Job
from llama_hw.plan.memory import Configuration, MemoryBreakdown, Rows, estimate
from llama_hw.plan.speed import DeviceRate, Speed, predict

HEADROOM = 0.10  # a configuration "fits" when its total leaves this share of the device free
MICRO_BATCHES = (1, 2, 4, 8, 16, 32)
# (engine, offload) pairs that llama_hw.train runs (DeepSpeed presets, FSDP2 flags).
ENGINE_CHOICES = (
    ("ddp", "none"), ("zero1", "none"), ("zero2", "none"), ("zero2", "optimizer"),
    ("zero3", "none"), ("zero3", "optimizer"), ("zero3", "optimizer+parameters"),
    ("fsdp2", "none"), ("fsdp2", "optimizer+parameters"),
)  # fmt: skip


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: int
    runtime_reserve_bytes: int
    rate: DeviceRate
    source: str  # where the memory and peak came from
    host_memory_bytes: int | None = None  # one node's RAM, for offloaded states (None: not checked)


@dataclass(frozen=True)
class Estimate:
    config: Configuration
    memory: MemoryBreakdown
    speed: Speed
    fits: bool
    tight: bool  # fits the device, but inside the headroom

    def to_dict(self, job: Job, tokens_per_epoch: int | None) -> dict[str, Any]:
        out = {
            "engine": self.config.engine,
            "offload": self.config.offload,
            "gradient_checkpointing": self.config.gradient_checkpointing,
            "micro_batch": self.config.micro_batch,
            "chunked_head": self.config.chunked_head,
            "packing": self.config.packing,
            "flags": self.config.flags(),
            "memory_bytes": self.memory.to_dict(),
            "fits": self.fits,
            "tight": self.tight,
            "step_time_s": self.speed.step_time_s,
            "tokens_per_s_per_device": self.speed.tokens_per_s_per_device,
        }
        if tokens_per_epoch:
            out["epoch_time_s"] = epoch_seconds(self, job, tokens_per_epoch)
        return out


def preference(estimate: Estimate) -> tuple:
    """Faster first; at equal predicted speed the larger micro batch (kernels run more efficiently than the
    constant-MFU model says), then the smaller memory."""
    return (round(estimate.speed.tokens_per_s_per_device, 6), estimate.config.micro_batch, -estimate.memory.total)


def epoch_seconds(estimate: Estimate, job: Job, tokens_per_epoch: int) -> float:
    return tokens_per_epoch / (estimate.speed.tokens_per_s_per_device * job.world_size)


@dataclass
class Plan:
    job: Job
    device: Device
    estimates: list[Estimate]
    tokens_per_epoch: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def recommended(self) -> Estimate | None:
        fitting = [e for e in self.estimates if e.fits]
        if not fitting:
            return None
        return max(fitting, key=preference)

    def best_per_choice(self) -> list[Estimate]:
        """Per engine / offload / checkpointing / head / packing: the largest micro batch that fits, else the
        smallest micro batch (to show by how much it misses)."""
        groups: dict[tuple, list[Estimate]] = {}
        for e in self.estimates:
            c = e.config
            groups.setdefault((c.engine, c.offload, c.gradient_checkpointing, c.chunked_head, c.packing), []).append(e)
        best = []
        for members in groups.values():
            fitting = [e for e in members if e.fits]
            best.append(max(fitting, key=preference) if fitting
                        else min(members, key=lambda e: e.config.micro_batch))  # fmt: skip
        return sorted(best, key=lambda e: (not e.fits, -e.speed.tokens_per_s_per_device))


def configurations(job: Job, packing_choices: tuple[bool, ...], max_micro_batch: int) -> list[Configuration]:
    engines = [(e, o) for e, o in ENGINE_CHOICES if job.world_size > 1 or e in ("ddp",) or o != "none"]
    if job.finetuning_type == "qlora":
        engines = [("ddp", "none")]  # bitsandbytes' 4-bit base cannot be sharded by ZeRO-3 or FSDP
    micro_batches = [m for m in MICRO_BATCHES if m <= max_micro_batch]
    return [
        Configuration(engine, offload, checkpointing, micro, chunked, packing)
        for (engine, offload), checkpointing, micro, chunked, packing in itertools.product(
            engines, (False, True), micro_batches, (True, False), packing_choices
        )
    ]


def evaluate(job: Job, config: Configuration, rows: Rows, device: Device) -> Estimate:
    memory = estimate(job, config, rows, device.runtime_reserve_bytes)
    speed = predict(job, config, rows, device.rate)
    limit, host = device.memory_bytes, device.host_memory_bytes
    host_fits = host is None or memory.host_offload <= (1 - HEADROOM) * host
    return Estimate(config, memory, speed, fits=host_fits and memory.total <= (1 - HEADROOM) * limit,
                    tight=host_fits and memory.total <= limit)  # fmt: skip


def make_plan(job: Job, device: Device, rows_for: dict[bool, Callable[[int], Rows]], *, max_micro_batch: int = 32,
              tokens_per_epoch: int | None = None) -> Plan:  # fmt: skip
    """`rows_for[packing](micro_batch)`: the rows with and without packing (only the keys given are tried)."""
    estimates = [
        evaluate(job, config, rows_for[config.packing](config.micro_batch), device)
        for config in configurations(job, tuple(rows_for), max_micro_batch)
    ]
    plan = Plan(job, device, estimates, tokens_per_epoch)
    if plan.recommended is None:
        plan.notes.append("no configuration fits: use more devices, LoRA / QLoRA, or a shorter --seq-len")
    return plan
