"""The planner beside the figures the sources published: per-device memory, and PMC-LLaMA's time per epoch.

Each row names the published setting, rebuilds it as one plan configuration (`llama_hw.plan`'s own
functions, no device needed) and prints the plan's number next to the published one. For PMC-LLaMA's
epochs (2.5B tokens on 8 A100s, 512-token windows) it also prints the MFU each published time implies:
FLOPs of an epoch (the bench's executed-work model, full rows) / (hours x 8 x 312 TFLOP/s).

    python benchmarks/plan_published.py
"""

from __future__ import annotations

import dataclasses

from llama_hw.backends.products import find_product
from llama_hw.bench.presets import PRESETS
from llama_hw.plan.devices import product_device
from llama_hw.plan.job import LINEAR_MODULES, Job
from llama_hw.plan.memory import Configuration
from llama_hw.plan.rows import full_rows
from llama_hw.plan.search import evaluate
from llama_hw.plan.speed import micro_batch_flops

GIB = 1024**3
HOST = 512 * GIB  # a typical 8-GPU server's RAM, for the offloaded states

# (setting, model, finetuning, precision, seq_len, devices, product, Configuration, published GB per device)
MEMORY_ROWS = [
    ("FastChat LoRA 7B (q_proj, v_proj), 4 x A100, batch 4 x 2048, ZeRO-2", "llama-7b", "lora", "fp16", 2048, 4,
     "A100-80GB", Configuration("zero2", "none", False, 4), 60),
    ("FastChat full 7B, 8 x A100, FSDP, batch 2 x 2048, checkpointing", "llama-7b", "full", "bf16", 2048, 8,
     "A100-80GB", Configuration("fsdp2", "none", True, 2), 70),
    ("Ascend port full 7B, 8 x 910B, ZeRO-1, batch 4 x 2048, checkpointing", "llama-7b", "full", "fp16", 2048, 8,
     "910B3", Configuration("zero1", "none", True, 4), 60),
    ("7B full, DeepSpeed fp16 + offload, 1 x 24 GB, batch 1 x 512, checkpointing", "llama-7b", "full", "fp16", 512,
     1, "RTX4090", Configuration("zero3", "optimizer+parameters", True, 1), 24),
    ("QLoRA 7B, 1 GPU, batch 1 x 512, checkpointing", "llama-7b", "qlora", "bf16", 512, 1, "RTX4090",
     Configuration("ddp", "none", True, 1), 8),
    ("QLoRA 65B, 2 x 24 GB together (layers split over both), batch 1 x 512", "llama-65b", "qlora", "bf16", 512, 1,
     "RTX4090", Configuration("ddp", "none", True, 1), 48),
]

# PMC-LLaMA: 2.5B tokens per epoch on 8 A100-80GB, 512-token windows, batch 128 (16 per device)
PMC_TOKENS = 2.5e9
PMC_ROWS = [
    ("7B, FSDP", "llama-7b", Configuration("fsdp2", "none", True, 16), 35),
    ("7B, DeepSpeed, optimizer offload", "llama-7b", Configuration("zero3", "optimizer", True, 16), 90),
    ("7B, DeepSpeed, optimizer + parameter offload", "llama-7b", Configuration("zero3", "optimizer+parameters", True,
                                                                              16), 100),  # fmt: skip
    ("13B, DeepSpeed, optimizer + parameter offload", "llama-13b", Configuration("zero3", "optimizer+parameters",
                                                                                True, 16), 122),  # fmt: skip
]


def memory_table() -> None:
    print("| published setting | published GB/device | plan GiB/device | plan / published | plan fits |")
    print("|---|---|---|---|---|")
    for setting, model, finetuning, precision, seq_len, devices, product, config, published in MEMORY_ROWS:
        targets = ("q_proj", "v_proj") if "FastChat LoRA" in setting else LINEAR_MODULES  # FastChat's default
        job = Job(PRESETS[model], finetuning_type=finetuning, lora_target=targets, precision=precision,
                  seq_len=seq_len, world_size=devices)  # fmt: skip
        pooled = published * 1e9 / GIB if "together" in setting else None  # both GPUs' memory, one model
        device = dataclasses.replace(product_device(find_product(product), precision, pooled, None),
                                     host_memory_bytes=HOST)  # fmt: skip
        estimate = evaluate(job, config, full_rows(seq_len), device)
        total = estimate.memory.total / GIB
        print(f"| {setting} | {published} | {total:.1f} | {total * GIB / (published * 1e9):.2f} | "
              f"{'yes' if estimate.fits else 'no'} |")


def pmc_table() -> None:
    a100 = find_product("A100-80GB")
    print()
    print("| PMC-LLaMA (8 x A100-80GB, 2.5B tokens/epoch) | published h/epoch | implied MFU | plan h/epoch "
          "(MFU 45 %) | plan / published |")  # fmt: skip
    print("|---|---|---|---|---|")
    for setting, model, config, hours in PMC_ROWS:
        job = Job(PRESETS[model], finetuning_type="full", precision="bf16", seq_len=512, world_size=8)
        rows = full_rows(512)
        flops_per_token = micro_batch_flops(job, config, rows) / (config.micro_batch * 512)
        implied = flops_per_token * PMC_TOKENS / (hours * 3600 * 8 * a100.peak_tflops["bf16"] * 1e12)
        device = product_device(a100, "bf16", None, None)
        estimate = evaluate(job, config, rows, device)
        predicted = PMC_TOKENS / (estimate.speed.tokens_per_s_per_device * 8) / 3600
        print(f"| {setting} | {hours} | {implied:.1%} | {predicted:.1f} | {predicted / hours:.2f} |")


if __name__ == "__main__":
    memory_table()
    pmc_table()
