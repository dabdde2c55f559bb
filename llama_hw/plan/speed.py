"""Predicted step time and tokens/s/device: FLOPs of the work executed, at an MFU, plus offload traffic.

The FLOPs are the benchmark's executed-work model (`llama_hw.bench.flops.FlopsModel`): decoder matrices on
every processed position, the head on the rows it computes (the labelled ones with the chunked head, all of
them otherwise), attention on the causal query/key pairs of each sequence; gradient checkpointing adds one
more forward pass of the decoder layers. An MFU calibrated from bench records (their executed-work `mfu`)
therefore applies unchanged. Time = FLOPs / (MFU x peak). MFU is the device's assumption (`llama_hw.backends.products`)
or the median of measured bench runs (`--calibrate`). Offloaded optimizer states cost the gradients' and
weights' trip over the host link each optimizer step and the host's Adam update (DeepSpeed's CPU Adam,
about 1e9 parameters/s per node); offloaded parameters travel twice (forward, backward) per micro batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_hw.bench.flops import FlopsModel
from llama_hw.plan.job import Job
from llama_hw.plan.memory import Configuration, Rows, compute_bytes

HOST_ADAM_PARAMS_PER_S = 1.0e9  # per node, DeepSpeed CPUAdam on a two-socket host


@dataclass(frozen=True)
class Speed:
    step_time_s: float  # one optimizer step of one device (all its micro batches)
    tokens_per_s_per_device: float  # effective (real text) tokens
    flops_per_step: float
    offload_time_s: float


@dataclass(frozen=True)
class DeviceRate:
    peak_tflops: float
    mfu: float
    host_link_gbps: float

    @property
    def flops_per_s(self) -> float:
        return self.peak_tflops * 1e12 * self.mfu


def micro_batch_flops(job: Job, config: Configuration, rows: Rows) -> float:
    counts = job.parameters()
    model = FlopsModel.for_shape(job.shape, adapter_parameters=counts.adapter, full=not job.uses_lora)
    positions = config.micro_batch * rows.mean_len
    effective = positions * rows.effective_fraction
    labelled = effective * rows.labelled_fraction
    head_rows = labelled if config.chunked_head else positions
    # Causal attention computes each sequence's lower triangle: about n^2 / 2 query/key pairs per sequence.
    context = rows.mean_context if rows.mean_context is not None else rows.mean_len
    pairs = positions * context / 2
    flops = model.batch(positions, pairs, head_rows)
    if config.gradient_checkpointing:
        body_forward = 2.0 * (counts.total - counts.embedding - counts.head + counts.adapter)
        flops += body_forward * positions + model.attention_coefficient * pairs / 3
    return flops


def offload_seconds(job: Job, config: Configuration, rate: DeviceRate) -> float:
    if config.offload == "none":
        return 0.0
    counts = job.parameters()
    a = compute_bytes(job.precision)
    shard = counts.trainable / job.world_size
    link = rate.host_link_gbps * 1e9
    seconds = 2 * a * shard / link  # gradients out, updated weights back
    seconds += shard * job.devices_per_node / HOST_ADAM_PARAMS_PER_S
    if config.offload == "optimizer+parameters":
        seconds += 2 * a * counts.total / job.world_size / link * job.gradient_accumulation_steps
    return seconds


def predict(job: Job, config: Configuration, rows: Rows, rate: DeviceRate) -> Speed:
    flops = micro_batch_flops(job, config, rows) * job.gradient_accumulation_steps
    compute = flops / rate.flops_per_s
    offload = offload_seconds(job, config, rate)
    step = compute + offload
    tokens = config.micro_batch * rows.mean_len * rows.effective_fraction * job.gradient_accumulation_steps
    return Speed(step, tokens / step, flops, offload)
