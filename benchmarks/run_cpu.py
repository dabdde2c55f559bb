"""The CPU measurements checked in under benchmarks/results/: bench-20m on real conversations, every padding
strategy, with and without llama_hw's runtime patches, plus full 2048-token rows for MFU.

Each configuration runs `--repeats` times (README tables show the medians, `bench compare` groups runs by
name). On a shared machine a run starts only once the 1-minute load average is below `--max-load`; the
load at the start and end of every run is kept in its record (`host.load_average_1m_at_*`). The fp32 GEMM
peak that MFU divides by is probed first, on the quiet machine (the best of 5 probes of the CPU backend's
own GEMM probe), and handed to every run as LLAMA_HW_PEAK_TFLOPS; it is written to `--peak-file`.

    python benchmarks/run_cpu.py [--repeats 3] [--max-load 1.5] [--only NAME ...] [--output F.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from llama_hw.utils.shared import shared_path

HERE = Path(__file__).resolve().parent
ALPACA = str(shared_path("data", "alpaca", "alpaca_en_demo.json"))
SHAREGPT = str(shared_path("data", "conversations", "fastchat_dummy_conversation.json"))
TOKENIZER = str(shared_path("data", "tokenizers", "llama2"))
MODEL = ["--model", "bench-20m", "--seq-len", "2048", "--micro-batch", "4", "--precision", "fp32", "--device", "cpu"]
ON_ALPACA = [*MODEL, "--data_path", ALPACA, "--template", "vicuna_v1.1", "--tokenizer", TOKENIZER]
ON_SHAREGPT = [*MODEL, "--data_path", SHAREGPT, "--template", "vicuna_v1.1", "--tokenizer", TOKENIZER]

# name -> flags; steps are sized so that each run measures about half a minute of training.
RUNS = {
    "alpaca max, no patches (FastChat-style)": [*ON_ALPACA, "--padding", "max", "--patches", "none",
                                                 "--warmup", "1", "--steps", "6"],
    "alpaca max": [*ON_ALPACA, "--padding", "max", "--warmup", "2", "--steps", "12"],
    "alpaca dynamic, no patches": [*ON_ALPACA, "--padding", "dynamic", "--patches", "none",
                                   "--warmup", "3", "--steps", "30"],
    "alpaca dynamic (default)": [*ON_ALPACA, "--padding", "dynamic", "--warmup", "3", "--steps", "40"],
    "alpaca packed, no patches": [*ON_ALPACA, "--padding", "packed", "--patches", "none",
                                  "--warmup", "1", "--steps", "6"],
    "alpaca packed": [*ON_ALPACA, "--padding", "packed", "--warmup", "2", "--steps", "12"],
    "sharegpt max, no patches (FastChat-style)": [*ON_SHAREGPT, "--padding", "max", "--patches", "none",
                                                   "--warmup", "1", "--steps", "6"],
    "sharegpt dynamic (default)": [*ON_SHAREGPT, "--padding", "dynamic", "--warmup", "3", "--steps", "40"],
    "sharegpt packed": [*ON_SHAREGPT, "--padding", "packed", "--warmup", "2", "--steps", "8"],
    "full 2048-token rows (MFU)": [*MODEL, "--warmup", "2", "--steps", "8"],
    "full 2048-token rows, no patches": [*MODEL, "--patches", "none", "--warmup", "2", "--steps", "8"],
}


def wait_for_quiet(max_load: float, poll_s: float = 15.0, give_up_s: float = 3600.0) -> float:
    """Block until the 1-minute load average is below `max_load`; returns it."""
    waited = 0.0
    while (load := os.getloadavg()[0]) >= max_load and waited < give_up_s:
        print(f"  load {load:.2f} >= {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(poll_s)
        waited += poll_s
    return load


def quiet_peak_tflops(max_load: float, probes: int = 5) -> list[float]:
    """The CPU backend's fp32 GEMM probe, `probes` times on a quiet machine (a cached probe may have run busy)."""
    import torch

    from llama_hw.backends.cpu import measure_gemm_tflops

    wait_for_quiet(max_load)
    return [round(measure_gemm_tflops(torch.float32), 4) for _ in range(probes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--only", nargs="*", help="run names to run (default: all)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "cpu.jsonl")
    parser.add_argument("--peak-file", type=Path, default=HERE / "results" / "cpu_peak.json")
    args = parser.parse_args()
    names = args.only or list(RUNS)
    env = dict(os.environ)
    if "LLAMA_HW_PEAK_TFLOPS" not in env:
        probes = quiet_peak_tflops(args.max_load)
        env["LLAMA_HW_PEAK_TFLOPS"] = f"fp32={max(probes)}"
        args.peak_file.parent.mkdir(parents=True, exist_ok=True)
        args.peak_file.write_text(json.dumps({"fp32_tflops_probes": probes, "used": max(probes)}) + "\n")
        print(f"fp32 GEMM peak: {max(probes)} TFLOP/s (probes {probes})", file=sys.stderr, flush=True)
    for repeat in range(args.repeats):
        for name in names:
            load = wait_for_quiet(args.max_load)
            print(f"[{repeat + 1}/{args.repeats}] {name} (load {load:.2f})", file=sys.stderr, flush=True)
            command = [sys.executable, "-m", "llama_hw.bench", "run", *RUNS[name], "--name", name,
                       "--output", str(args.output), "--json"]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, env=env)
            if result.returncode != 0:
                sys.exit(f"{name} failed:\n{result.stderr[-3000:]}")


if __name__ == "__main__":
    main()
