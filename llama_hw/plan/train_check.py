"""The plan's prediction for the flags a training run was given: printed at start, refused when far over.

`llama_hw.train` calls `plan_training` once its data is read and before the model loads: the model's
config.json, the parallelism, micro batch, checkpointing, precision, packing, the head patch and the data's
longest row give one Configuration. A prediction above REFUSE_FACTOR x the device's memory stops the run
(exit 2, with the numbers and the fastest configuration that fits); `--ignore_plan True` runs anyway.
After training the run records the prediction next to the measured peak (`llama_hw.json`, key
`memory_plan`), which is how the model is checked against reality on every run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_hw.errors import UsageError
from llama_hw.plan.devices import backend_device
from llama_hw.plan.job import LINEAR_MODULES, Job
from llama_hw.plan.memory import Configuration, Rows
from llama_hw.plan.search import Device, Estimate, Plan, evaluate, make_plan

REFUSE_FACTOR = 1.25  # the model's own error on measured runs is within 15 %: refuse only clear overruns
GIB = 1024**3


@dataclass(frozen=True)
class TrainingPlan:
    job: Job
    device: Device
    estimate: Estimate
    rows: Rows

    def describe(self) -> str:
        m = self.estimate.memory
        parts = ", ".join(f"{name.replace('_', ' ')} {value / GIB:.2f}" for name, value in m.to_dict().items()
                          if name not in ("total", "host_offload") and value)  # fmt: skip
        return (f"plan: predicted peak {m.total / GIB:.2f} GiB per device of {self.device.memory_bytes / GIB:.1f} GiB "
                f"({self.device.source}): {parts}")  # fmt: skip

    def check(self, ignore: bool) -> None:
        total, limit = self.estimate.memory.total, self.device.memory_bytes
        if total <= REFUSE_FACTOR * limit or ignore:
            return
        plan = self.alternatives()
        better = plan.recommended
        hint = (f"the plan suggests: {' '.join(better.config.flags())} ({better.memory.total / GIB:.1f} GiB); "
                if better is not None else "no configuration fits: use more devices, LoRA or a shorter "
                "--model_max_length; ")  # fmt: skip
        raise UsageError(
            f"this run is predicted to need {total / GIB:.1f} GiB per device, {total / limit:.1f}x the "
            f"{limit / GIB:.1f} GiB available ({self.device.source}); {hint}"
            f"see `python -m llama_hw.plan`, or pass --ignore_plan True to try anyway"
        )

    def alternatives(self) -> Plan:
        rows = self.rows
        return make_plan(self.job, self.device, {self.estimate.config.packing: lambda micro: rows},
                         max_micro_batch=self.estimate.config.micro_batch)  # fmt: skip

    def record(self, measured_peak_bytes: int | None) -> dict[str, Any]:
        out = {"predicted_bytes": self.estimate.memory.to_dict(), "device_memory_bytes": self.device.memory_bytes,
               "flags": self.estimate.config.flags(), "measured_peak_bytes": measured_peak_bytes}  # fmt: skip
        if measured_peak_bytes:
            out["predicted_over_measured"] = round(self.estimate.memory.total / measured_peak_bytes, 3)
        return out


def engine_of(deepspeed: dict | None, fsdp) -> tuple[str, str]:
    if deepspeed:
        zero = deepspeed.get("zero_optimization", {})
        stage = int(zero.get("stage", 0))
        def offloaded(key: str) -> bool:
            return str((zero.get(key) or {}).get("device", "none")).lower() in ("cpu", "nvme")

        offload = ("optimizer+parameters" if offloaded("offload_param") else
                   "optimizer" if offloaded("offload_optimizer") else "none")  # fmt: skip
        return ("ddp" if stage == 0 else f"zero{stage}"), offload
    if fsdp:
        return "fsdp2", "optimizer+parameters" if fsdp.cpu_offload else "none"
    return "ddp", "none"


def plan_training(config, backend, parallelism, model_dir: Path, data, chunked_head: bool) -> TrainingPlan | None:
    """The prediction for this run, or None where the model is not a LLaMA-style decoder."""
    from transformers import AutoConfig

    from llama_hw.bench.presets import ModelShape
    from llama_hw.train.arguments import split_names

    try:
        shape = ModelShape.from_config(AutoConfig.from_pretrained(model_dir))
    except (AttributeError, KeyError, TypeError, ValueError, OSError):
        return None
    training, finetuning = config.training, config.finetuning
    targets = [name for name in split_names(finetuning.lora_target) if name != "all"] or list(LINEAR_MODULES)
    if any(name not in LINEAR_MODULES for name in targets):
        return None
    precision = "bf16" if training.get("bf16") else "fp16" if training.get("fp16") else "fp32"
    world = parallelism.world_size
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    job = Job(shape, finetuning.finetuning_type, finetuning.lora_r or 8, tuple(targets), finetuning.lora_dropout or 0.0,
              precision,
              config.model.model_max_length, world, max(1, world // max(1, local)),
              int(training.get("gradient_accumulation_steps") or 1), backend.dropout_mask_bytes)  # fmt: skip
    engine, offload = engine_of(parallelism.deepspeed, parallelism.fsdp)
    packing = bool(getattr(config.data, "packing", False))
    checkpointing = bool(training.get("gradient_checkpointing") or training.get("activation_checkpointing"))
    micro = int(training.get("per_device_train_batch_size") or 1)
    configuration = Configuration(engine, offload, checkpointing, micro, chunked_head, packing)
    rows = data_rows(data, job.seq_len, packing)
    device = backend_device(backend, precision, None, None)
    return TrainingPlan(job, device, evaluate(job, configuration, rows, device), rows)


def data_rows(data, seq_len: int, packing: bool) -> Rows:
    """The longest row the data makes (the memory peak); full rows when packed or unknown."""
    stats = getattr(data, "stats", None)
    longest = (getattr(stats, "length_percentiles", None) or {}).get("max") if not packing else None
    length = min(int(longest), seq_len) if longest else seq_len
    return Rows(length, length)
