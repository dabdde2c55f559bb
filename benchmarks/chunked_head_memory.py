"""Peak memory of one training step with and without `chunked_cross_entropy`, for a Llama-3 (128,256-token) head.

Both runs go through the bench harness (`python -m llama_hw.bench run`), each in its own process so that
each peak is its own: the llama3-8b preset shrunk to one layer of width 256 (the head keeps its 128,256 x 256
shape), micro batch 4 x 2048 synthetic tokens, fp32 on the CPU, no warm-up and one measured step. The peak
is the harness's (`peak_memory_bytes`: the process's resident high-water mark since training began, so it
includes the weights, Adam's state and the batch, the same in both runs); the difference is the head's.

    python benchmarks/chunked_head_memory.py [--micro-batch 4] [--seq-len 2048] [--device cpu]

Prints a markdown table and the machine it ran on. Needs about 14 GB of free memory for the stock run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

GIB = 2**30
RUNS = {"stock head (logits materialised)": "all,-chunked_cross_entropy", "chunked_cross_entropy": "all"}


def bench_run(patches: str, args: argparse.Namespace, output: Path) -> dict:
    command = [
        sys.executable, "-m", "llama_hw.bench", "run", "--model", "llama3-8b", "--layers", "1", "--hidden", "256",
        "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch), "--warmup", "0", "--steps", "1",
        "--precision", args.precision, "--device", args.device, "--patches", patches, "--json", "--output", str(output),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> str:
    from llama_hw.backends.cpu import cpu_model_name

    load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"{cpu_model_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; "
            f"load average (1/5/15 min) after the runs: {load}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    records = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, patches in RUNS.items():
            records[name] = bench_run(patches, args, Path(scratch) / "runs.jsonl")
    stock = records["stock head (logits materialised)"]["peak_memory_bytes"]
    print(f"One training step, llama3-8b head (vocab 128,256) on a 1-layer, 256-wide body, micro batch "
          f"{args.micro_batch} x {args.seq_len} tokens, {args.precision} on {args.device}:\n")  # fmt: skip
    print("| head | peak memory | saved |")  # no step time: one step on a shared host times the neighbours
    print("|---|---:|---:|")
    for name, record in records.items():
        peak = record["peak_memory_bytes"]
        saved = "" if peak == stock else f"{(stock - peak) / GIB:.2f} GiB ({1 - peak / stock:.0%})"
        print(f"| {name} | {peak / GIB:.2f} GiB | {saved} |")
    commit = records["chunked_cross_entropy"].get("git", {}).get("commit", "?")
    print(f"\nMachine: {machine()}; torch {records['chunked_cross_entropy']['versions'].get('torch')}, "
          f"commit {str(commit)[:7]}.")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
