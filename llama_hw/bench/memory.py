"""Refuse a benchmark that cannot fit before allocating it: a coarse lower bound of one process's memory.

Today a too-large configuration allocates for minutes and then dies (or swaps the host to a halt). The
bound counts only what the run must hold, so a refusal is certain, never a guess:
- weights: fp32 for full fine-tuning (Trainer keeps fp32 master weights under bf16/fp16 autocast), the
  compute dtype for LoRA's frozen base;
- gradients and AdamW's two moments for every trainable weight, in fp32;
- activations kept for the backward pass: about 10 x hidden + 4 x MLP width values per token and layer
  (norm inputs, q/k/v/o, residuals, the SwiGLU's gate, up, product and down input) in the compute dtype —
  one layer's worth plus each layer's input under gradient checkpointing; no attention scores (flash-style
  kernels keep none) and no logits (the chunked head keeps none).
ZeRO divides optimizer states (stage 1), gradients (2) and weights (3) by the number of ranks. On a CPU every
local rank shares the host's memory. The precise planner is llama_hw/plan/; this only stops the hopeless.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from llama_hw.bench.flops import matmul_parameters
from llama_hw.bench.presets import ModelShape
from llama_hw.errors import UsageError

GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class MemoryBound:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    processes: int = 1  # processes sharing the memory it is compared with

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations) * self.processes

    def describe(self) -> str:
        parts = ", ".join(f"{name} {getattr(self, name) / GIB:.2f}"
                          for name in ("weights", "gradients", "optimizer", "activations"))  # fmt: skip
        shared = f" x {self.processes} processes" if self.processes > 1 else ""
        return f"{self.total / GIB:.2f} GiB ({parts} GiB{shared})"


def memory_bound(spec, shape: ModelShape, precision: str, world_size: int, host_memory: bool) -> MemoryBound:
    parameters = matmul_parameters(shape) + shape.vocab_size * shape.hidden_size  # + the input embedding
    full = spec.finetuning_type == "full"
    trainable = parameters if full else 0  # LoRA's adapters are a rounding error next to the base
    weight_bytes = 4 if full else DTYPE_BYTES[precision]
    zero, ranks = spec.zero, max(1, world_size)
    weights = parameters * weight_bytes / (ranks if zero >= 3 else 1)
    gradients = trainable * 4 / (ranks if zero >= 2 else 1)
    optimizer = trainable * 8 / (ranks if zero >= 1 else 1)
    tokens = spec.micro_batch * spec.seq_len
    per_layer = (10 * shape.hidden_size + 4 * shape.intermediate_size) * DTYPE_BYTES[precision]
    layers = (1 + shape.hidden_size * DTYPE_BYTES[precision] * shape.num_hidden_layers / per_layer
              if spec.gradient_checkpointing else shape.num_hidden_layers)  # fmt: skip
    activations = tokens * per_layer * layers
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if host_memory else 1
    return MemoryBound(weights, gradients, optimizer, activations, processes=max(1, local))


def available_bytes(backend) -> tuple[float | None, str]:
    """Memory this process can still use, and where: the host's available RAM for the CPU backend, the
    device's free memory (the torch device module's `mem_get_info`) otherwise; None when unknown."""
    if backend.torch_device_type == "cpu":
        import psutil

        return float(psutil.virtual_memory().available), "available host memory"
    import torch

    try:
        from llama_hw.utils import distributed

        module = torch.get_device_module(backend.torch_device_type)
        free, _total = module.mem_get_info(backend.device(distributed.local_rank()))
        return float(free), f"free memory of {backend.device_name()}"
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None, ""


def check_fits(spec, shape: ModelShape, backend, precision: str, parallelism) -> MemoryBound:
    """UsageError naming the bound and the memory when the run cannot fit; the bound otherwise."""
    bound = memory_bound(spec, shape, precision, parallelism.world_size, backend.torch_device_type == "cpu")
    available, where = available_bytes(backend)
    if available is not None and bound.total > available:
        raise UsageError(
            f"this benchmark needs at least {bound.describe()} but {available / GIB:.2f} GiB is the {where}: "
            "lower --micro-batch or --seq-len, shrink the preset (--layers/--hidden), or use --finetuning_type "
            "lora, --gradient-checkpointing or --zero"
        )
    return bound
