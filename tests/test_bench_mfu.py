"""Executed-work MFU and model FLOPs utilisation stay at or below 1 on a correct peak (issue 19.1).

The peak is the CPU backend's own GEMM probe, taken in this process right before and right after the run
(the best of both: a machine busy with other work only ever slows a probe down)."""

from __future__ import annotations

import pytest
import torch

from llama_hw.backends.cpu import PROBE_REPEATS, measure_gemm_tflops
from llama_hw.bench import BenchSpec, build_bench_session, build_record


@pytest.fixture
def two_threads(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA_HW_CACHE_DIR", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


def measured(spec: BenchSpec, monkeypatch) -> dict:
    first = measure_gemm_tflops(torch.float32, repeats=PROBE_REPEATS)
    monkeypatch.setenv("LLAMA_HW_PEAK_TFLOPS", f"fp32={first}")
    session = build_bench_session(spec, progress=False)
    measurement = session.train()
    peak = max(first, measure_gemm_tflops(torch.float32, repeats=PROBE_REPEATS))
    session.peak = {"tflops": peak, "source": "probe"}
    return build_record(session, measurement)


@pytest.mark.slow
def test_a_stock_full_row_run_stays_below_the_peak(two_threads, monkeypatch):
    spec = BenchSpec(model="bench-20m", seq_len=512, micro_batch=2, steps=4, warmup=1, patches="none", device="cpu")
    record = measured(spec, monkeypatch)
    assert record["work"]["attention_layout"] == "sdpa" and record["work"]["head_rows"] == "all"
    assert 0 < record["model_flops_utilization"] <= record["mfu"] <= 1


@pytest.mark.slow
def test_a_patched_padded_run_counts_only_the_work_it_does(two_threads, monkeypatch, llama2_tokenizer_dir, shared_dir):
    alpaca = str(shared_dir / "data" / "alpaca" / "alpaca_en_demo.json")
    spec = BenchSpec(model="bench-20m", seq_len=1024, micro_batch=2, steps=4,
                     warmup=1, padding="max", lengths_from=alpaca, tokenizer=str(llama2_tokenizer_dir),
                     device="cpu")  # fmt: skip
    record = measured(spec, monkeypatch)
    work, flops, tokens = record["work"], record["model"]["flops_per_token"], record["tokens"]
    assert work["attention_layout"] == "cpu-varlen" and work["head_rows"] == "labelled"
    steps = record["measured_steps"]
    # what the old accounting charged: the head at labelled rows but attention over every padded row
    padded_rows = flops["body"] * tokens["processed"] + flops["head"] * tokens["trained"]
    padded_rows += flops["attention_per_context_position"] * tokens["processed"] * 1024
    assert work["flops_per_device_step"] < padded_rows / steps
    assert work["head_rows_per_device_step"] == tokens["trained"] / steps < tokens["processed"] / steps
    assert 0 < record["model_flops_utilization"] <= record["mfu"] <= 1
