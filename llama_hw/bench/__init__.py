"""Benchmarks of the trainer's own loop: tokens/s/device three ways, executed-work MFU and model FLOPs
utilisation, memory; comparisons; loss parity (docs/explanation/token-accounting.md).

    from llama_hw.bench import BenchSpec, build_bench_session, build_record
    session = build_bench_session(BenchSpec(model="bench-20m", seq_len=2048, micro_batch=4))
    record = build_record(session, session.train())   # the JSON object `bench run` writes
"""

from __future__ import annotations

from llama_hw.bench.flops import FlopsModel, matmul_parameters, mfu
from llama_hw.bench.presets import PRESETS, ModelShape, ShapeOverrides, preset_shape
from llama_hw.bench.results import REQUIRED_KEYS, build_record, read_jsonl
from llama_hw.bench.session import BenchSession, BenchSpec, build_bench_session
from llama_hw.bench.stability import StopRule
from llama_hw.bench.tokens import TokenCounts, count_batch
from llama_hw.bench.work import WorkLayout, work_layout

__all__ = [
    "PRESETS",
    "REQUIRED_KEYS",
    "BenchSession",
    "BenchSpec",
    "FlopsModel",
    "ModelShape",
    "ShapeOverrides",
    "StopRule",
    "TokenCounts",
    "WorkLayout",
    "build_bench_session",
    "build_record",
    "count_batch",
    "matmul_parameters",
    "mfu",
    "preset_shape",
    "read_jsonl",
    "work_layout",
]
