"""The planner against measured memory: predicted vs measured peak per device for bench runs on this CPU.

Each configuration runs `llama-hw bench run` (synthetic full rows, fp32, 2 measured steps after one warm-up;
two ranks under `llama_hw.launch` for ZeRO) and reads its `peak_memory_bytes` (the CPU backend's peak RSS of
the training steps, the largest over ranks). The planner predicts the same run with `llama_hw.plan`'s own
functions; its runtime reserve is the RSS of a fresh process that has imported what a bench run imports
(torch, transformers, DeepSpeed, llama_hw), measured here first. Memory is not disturbed by a busy machine,
so the load is only recorded.

    python benchmarks/plan_validation.py [--only NAME ...] [--output benchmarks/results/plan_validation.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from llama_hw.backends.cpu import CpuBackend
from llama_hw.bench.presets import PRESETS
from llama_hw.plan.job import Job
from llama_hw.plan.memory import Configuration, Rows, estimate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GIB = 1024**3
SHAPE = PRESETS["bench-20m"]
# name -> (finetuning, seq_len, micro_batch, checkpointing, chunked head, zero stage, ranks)
RUNS = {
    "full 512 x1": ("full", 512, 1, False, True, 0, 1),
    "full 2048 x4": ("full", 2048, 4, False, True, 0, 1),
    "full 2048 x4, checkpointing": ("full", 2048, 4, True, True, 0, 1),
    "full 2048 x4, stock head": ("full", 2048, 4, False, False, 0, 1),
    "full 2048 x4, stock head, checkpointing": ("full", 2048, 4, True, False, 0, 1),
    "lora 2048 x4": ("lora", 2048, 4, False, True, 0, 1),
    "lora 512 x1, checkpointing": ("lora", 512, 1, True, True, 0, 1),
    "lora 2048 x1, stock head": ("lora", 2048, 1, False, False, 0, 1),
    "full 2048 x2, ZeRO-2, 2 ranks": ("full", 2048, 2, False, True, 2, 2),
    "full 2048 x2, ZeRO-3, 2 ranks": ("full", 2048, 2, False, True, 3, 2),
}
IMPORTS = ("import torch, transformers, deepspeed, psutil; import llama_hw.bench.session, llama_hw.train.session; "
           "from transformers import Trainer; print(psutil.Process().memory_info().rss)")  # fmt: skip


def baseline_rss() -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def bench_command(run: tuple) -> list[str]:
    finetuning, seq_len, micro, checkpointing, chunked, zero, ranks = run
    flags = ["run", "--model", "bench-20m", "--seq-len", str(seq_len), "--micro-batch", str(micro),
             "--finetuning_type", finetuning, "--precision", "fp32", "--device", "cpu", "--warmup", "1",
             "--steps", "2", "--json", "--output", os.devnull]  # fmt: skip
    if checkpointing:
        flags.append("--gradient-checkpointing")
    if not chunked:
        flags.append("--patches=-chunked_cross_entropy")
    if zero:
        flags += ["--zero", str(zero)]
    if ranks > 1:
        return [sys.executable, "-m", "llama_hw.launch", "--device", "cpu", "--nproc-per-node", str(ranks),
                "--script", str(HERE / "bench.py"), "--", *flags]  # fmt: skip
    return [sys.executable, "-m", "llama_hw.bench", *flags]


def measure(run: tuple) -> dict:
    result = subprocess.run(bench_command(run), capture_output=True, text=True, cwd=REPO)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"bench failed ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(lines[-1])


def predict(run: tuple, reserve: int):
    finetuning, seq_len, micro, checkpointing, chunked, zero, ranks = run
    job = Job(SHAPE, finetuning_type=finetuning, precision="fp32", seq_len=seq_len, world_size=ranks,
              dropout_mask_bytes=CpuBackend.dropout_mask_bytes)  # fmt: skip
    config = Configuration(f"zero{zero}" if zero else "ddp", "none", checkpointing, micro, chunked)
    return estimate(job, config, Rows(seq_len, seq_len), reserve)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="run names to measure (default: all)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "plan_validation.jsonl")
    args = parser.parse_args(argv)
    reserve = baseline_rss()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"runtime reserve (imports only) {reserve / GIB:.2f} GiB", flush=True)  # fmt: skip
    print("| configuration | predicted GiB | measured GiB | predicted / measured | parts (GiB) |")
    print("|---|---|---|---|---|")
    records = []
    for name, run in RUNS.items():
        if args.only and name not in args.only:
            continue
        load = os.getloadavg()[0]
        record = measure(run)
        memory = predict(run, reserve)
        measured = record["peak_memory_bytes"]
        parts = ", ".join(f"{key.replace('_', ' ')} {value / GIB:.2f}" for key, value in memory.to_dict().items()
                          if key not in ("total", "host_offload") and value)  # fmt: skip
        ratio = memory.total / measured
        print(f"| {name} | {memory.total / GIB:.2f} | {measured / GIB:.2f} | {ratio:.2f} | {parts} |", flush=True)
        records.append({"name": name, "predicted_bytes": memory.to_dict(), "measured_peak_bytes": measured,
                        "ratio": ratio, "load_1m_at_start": load, "runtime_reserve_bytes": reserve})  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    worst = max(abs(r["ratio"] - 1) for r in records) if records else 0
    print(f"worst deviation {worst:.1%} over {len(records)} configurations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
