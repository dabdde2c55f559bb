"""`bench run` refuses before measuring what would lose the result or cannot fit, and never loses a measurement."""

from __future__ import annotations

import json

import pytest

from bench_support import TINY
from llama_hw.bench.memory import GIB, check_fits, memory_bound
from llama_hw.bench.presets import preset_shape
from llama_hw.bench.recipe import main
from llama_hw.errors import UsageError, run_cli


def test_an_output_that_cannot_be_written_is_refused_before_anything_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("llama_hw.bench.session.build_bench_session", lambda *a, **k: pytest.fail("it measured"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert run_cli(main, ["run", *TINY, "--output", str(blocker / "results.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {blocker / 'results.jsonl'}") and err.count("\n") == 1
    assert blocker.read_text() == "" and not list(tmp_path.glob(".llama_hw_bench_*"))


def test_the_result_is_printed_when_appending_fails(tmp_path, capsys, monkeypatch):
    """The file went away during the run (disk full, unmounted): the numbers still reach the user."""
    output = tmp_path / "results.jsonl"

    def fail(path, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("llama_hw.bench.results.append_jsonl", fail)
    monkeypatch.setenv("LLAMA_HW_PEAK_TFLOPS", "fp32=1")
    argv = ["run", *TINY, "--seq-len", "16", "--steps", "1", "--warmup", "0", "--device", "cpu",
            "--output", str(output), "--json"]  # fmt: skip
    assert run_cli(main, argv) == 2
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert record["measured_steps"] == 1 and record["tokens"]["processed"] == 16
    assert "could not append the result to" in captured.err and "No space left on device" in captured.err
    assert "it is printed above" in captured.err


def test_a_configuration_that_cannot_fit_is_refused_with_the_numbers(monkeypatch):
    from llama_hw.backends.cpu import CpuBackend
    from llama_hw.bench import BenchSpec
    from llama_hw.train.session import Parallelism

    spec = BenchSpec(model="llama-7b", seq_len=2048, micro_batch=4)
    shape = preset_shape("llama-7b")
    bound = memory_bound(spec, shape, "fp32", 1, host_memory=True)
    # 6.74e9 weights x (4 weights + 4 gradients + 8 AdamW) bytes: ~100 GiB before activations
    assert bound.weights + bound.gradients + bound.optimizer == pytest.approx(6_738_149_376 * 16, rel=1e-3)
    assert bound.activations == 4 * 2048 * (10 * 4096 + 4 * 11008) * 4 * 32
    monkeypatch.setattr("llama_hw.bench.memory.available_bytes", lambda backend: (64 * GIB, "available host memory"))
    with pytest.raises(UsageError) as refused:
        check_fits(spec, shape, CpuBackend(), "fp32", Parallelism(1))
    message = str(refused.value)
    assert message.startswith("this benchmark needs at least 1") and "weights 25.10, gradients 25.10" in message
    assert "64.00 GiB is the available host memory" in message and "--gradient-checkpointing" in message
    lora = BenchSpec(model="llama-7b", seq_len=512, micro_batch=1, finetuning_type="lora", gradient_checkpointing=True)
    assert check_fits(lora, shape, CpuBackend(), "bf16", Parallelism(1)).total < 64 * GIB


def test_zero_3_divides_every_state_by_the_ranks():
    from llama_hw.bench import BenchSpec

    shape = preset_shape("llama-7b")
    one = memory_bound(BenchSpec(model="llama-7b"), shape, "bf16", 1, host_memory=False)
    sharded = memory_bound(BenchSpec(model="llama-7b", zero=3), shape, "bf16", 8, host_memory=False)
    assert sharded.weights == one.weights / 8 and sharded.optimizer == one.optimizer / 8
    assert sharded.activations == one.activations


def test_the_cli_refuses_a_model_too_large_for_this_host(capsys):
    assert run_cli(main, ["run", "--model", "llama-65b", "--device", "cpu", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: this benchmark needs at least") and "GiB is the available host memory" in err
