"""Helpers for the benchmark tests: a tiny random LLaMA, hand-written result records, CLI runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, subprocess_env

# A bench-20m shrunk to run in a fraction of a second per step on one CPU thread.
TINY = ["--model", "bench-20m", "--layers", "1", "--hidden", "64", "--heads", "4", "--vocab", "384"]


def tiny_llama(vocab: int = 384, kv_heads: int = 2, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         use_cache=False, attn_implementation="sdpa")  # fmt: skip
    return LlamaForCausalLM(config)


CONFIG = {"model": "bench-20m", "seq_len": 2048, "micro_batch": 4, "grad_accum": 1, "global_batch": 4,
          "padding": "dynamic", "data_path": "alpaca.json", "sampling": "sequential", "learning_rate": 2e-5,
          "seed": 0, "zero": 0}  # fmt: skip


def record(name: str, effective: float, processed: float | None = None, losses=(2.0, 1.5, 1.0), config=None,
           **extra) -> dict:  # fmt: skip
    """A `bench run` result (schema 3) with the keys compare/parity read; numbers as given."""
    processed = effective if processed is None else processed
    return {
        "schema": 3,
        "name": name,
        "device": {"backend": "cpu", "product": "Test CPU", "count": 1},
        "tokens_per_s_per_device": {"processed": processed, "effective": effective, "trained": effective / 2},
        "mfu": 0.5, "model_flops_utilization": 0.5 * effective / processed,
        "work": {"attention_flops_per_device_step": 2e12, "head_rows_per_device_step": 1500.0},
        "step_time_s": {"p50": 1.0, "p90": 1.2}, "first_step_s": 3.0,
        "peak_memory_bytes": 2**30, "losses": list(losses), "config": {**CONFIG, **(config or {})},
        "versions": {"torch": "x"},
        **extra,
    }  # fmt: skip


def write_jsonl(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def bench_cli(argv: list[str], timeout: float = 300, script: bool = False) -> subprocess.CompletedProcess:
    """`python -m llama_hw.bench ARGV` (or benchmarks/bench.py) in a subprocess on one thread."""
    head = [sys.executable, str(REPO / "benchmarks" / "bench.py")] if script else [sys.executable, "-m", "llama_hw.bench"]
    return subprocess.run([*head, *argv], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
