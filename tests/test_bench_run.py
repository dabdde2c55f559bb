"""`bench run` end to end: the JSON contract, exact token accounting through the Trainer, and two ranks."""

from __future__ import annotations

import json
import math
import sys

import pytest

from bench_support import TINY, bench_cli
from conftest import REPO, subprocess_env
from llama_hw.bench.results import REQUIRED_KEYS


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench") / "results.jsonl"
    argv = [*TINY, "--seq-len", "32", "--micro-batch", "2", "--steps", "3", "--warmup", "1", "--padding", "max",
            "--device", "cpu", "--name", "tiny", "--output", str(output), "--json"]  # fmt: skip
    result = bench_cli(["run", *argv])
    assert result.returncode == 0, result.stderr[-3000:]
    return result, output


def test_json_mode_prints_only_the_record_and_appends_it(cli_run):
    result, output = cli_run
    lines = result.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    assert len(lines) == 1  # quiet: nothing else on stdout
    assert output.read_text().splitlines() == [json.dumps(record)]
    assert "measuring" not in result.stderr  # no progress bar


def test_the_record_has_every_key_scripts_use(cli_run):
    record = json.loads(cli_run[0].stdout.strip().splitlines()[-1])
    assert set(REQUIRED_KEYS) <= record.keys()
    assert record["name"] == "tiny"
    assert record["device"]["backend"] == "cpu" and record["device"]["count"] == 1 and record["device"]["product"]
    assert set(record["tokens_per_s_per_device"]) == {"processed", "effective", "trained"}
    assert {"p50", "p90"} <= record["step_time_s"].keys()
    assert record["step_time_s"]["p90"] >= record["step_time_s"]["p50"] > 0 and record["first_step_s"] > 0
    assert len(record["losses"]) == 4 and all(math.isfinite(loss) for loss in record["losses"])
    assert record["peak_memory_bytes"] > 0 and record["host_rss_peak_bytes"] > 0
    assert record["config"]["padding"] == "max" and record["config"]["seq_len"] == 32
    assert {"python", "torch", "torch-npu", "cann", "transformers", "deepspeed"} <= record["versions"].keys()
    assert "chunked_cross_entropy" in record["patches"] and record["git"].keys() == {"commit", "dirty"}
    assert record["work"]["attention_layout"] == "cpu-varlen" and record["work"]["head_rows"] == "labelled"
    assert record["peak_source"]["source"] in ("probe", "cache", "env") and record["peak_source"]["tflops"] > 0
    assert record["stop_reason"] == "3 steps as asked (--steps)"
    assert {"median", "ci95_low", "ci95_high", "spread"} <= record["rate_stability"].keys()


def test_rates_and_mfu_follow_from_the_counts(cli_run):
    record = json.loads(cli_run[0].stdout.strip().splitlines()[-1])
    rates, tokens = record["tokens_per_s_per_device"], record["tokens"]
    seconds = sum(record["step_times_s"])
    assert len(record["step_times_s"]) == record["measured_steps"] == 3
    assert tokens["processed"] == 3 * 2 * 32  # synthetic rows fill --seq-len: no padding
    assert rates["processed"] == pytest.approx(tokens["processed"] / seconds)
    assert rates["trained"] == pytest.approx(3 * 2 * 31 / seconds)  # every next token is a target
    flops = record["model"]["flops_per_token"]
    # full rows without padding: one causal call per row, the chunked head on the 31 labelled rows of each
    attention = flops["attention_per_context_position"] * 2 * 32 * 33 / 2
    executed = flops["body"] * 2 * 32 + flops["head"] * 2 * 31 + attention
    work = record["work"]
    assert work["attention_flops_per_device_step"] == pytest.approx(attention)
    assert work["head_rows_per_device_step"] == 2 * 31
    assert work["flops_per_device_step"] == pytest.approx(executed)
    assert record["mfu"] == pytest.approx(3 * executed / seconds / (record["peak_tflops"] * 1e12))
    # model FLOPs: the same work here (no padding, the head only where the loss reads, causal rows)
    model_flops = executed
    peak = record["peak_tflops"] * 1e12
    assert record["model_flops_utilization"] == pytest.approx(3 * model_flops / seconds / peak)
    assert record["model_flops_per_token"] == pytest.approx(model_flops / 64)


def test_the_summary_names_both_utilisations_the_work_and_the_peaks_source(cli_run):
    from llama_hw.bench.results import summary

    record = json.loads(cli_run[0].stdout.strip().splitlines()[-1])
    text = summary(record)
    assert "of the work executed, model FLOPs utilisation" in text
    assert "attention" in text and "(cpu-varlen), head on 62 rows (labelled)" in text
    assert f"[{record['peak_source']['source']}" in text and "3 steps as asked (--steps)" in text
    assert all(f"warning: {warning}" in text for warning in record["warnings"])


@pytest.fixture
def one_thread(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("LLAMA_HW_CACHE_DIR", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("padding", ["dynamic", "packed"])
def test_counts_through_the_trainer_match_the_data(padding, one_thread, llama2_tokenizer_dir, shared_dir):
    """Sequential batches of the real pipeline: every step's counts equal the samples it trained on."""
    from llama_hw.bench import BenchSpec, ShapeOverrides, build_bench_session
    from llama_hw.data import DataArguments, build_sft_data, load_tokenizer

    alpaca = str(shared_dir / "data" / "alpaca" / "alpaca_en_demo.json")
    spec = BenchSpec(model="bench-20m", overrides=ShapeOverrides(layers=1, hidden=64), seq_len=512, micro_batch=2,
                     steps=2, warmup=1, padding=padding, data_path=alpaca, tokenizer=str(llama2_tokenizer_dir),
                     device="cpu")  # fmt: skip
    session = build_bench_session(spec, progress=False)
    measurement = session.train()
    tokenizer = load_tokenizer(str(llama2_tokenizer_dir), model_max_length=512)
    data = build_sft_data(DataArguments(data_path=alpaca, packing=padding == "packed"), tokenizer, 512)
    rows = [data.train_dataset[i] for i in range(6)]
    for step, batch in zip(measurement.steps, (rows[0:2], rows[2:4], rows[4:6])):
        lengths = [len(row["input_ids"]) for row in batch]
        assert step.counts.effective == sum(lengths)
        assert step.counts.trained == sum(sum(label != -100 for label in row["labels"]) for row in batch)
        if padding == "dynamic":
            assert step.counts.processed == 2 * max(lengths)
            assert step.counts.samples == 2
        else:
            assert step.counts.samples == sum(row["num_sequences"] for row in batch)
    assert len(measurement.losses) == 3 and measurement.world_size == 1


@pytest.mark.parametrize("zero, parallelism", [("0", "DDP"), ("2", "DeepSpeed ZeRO-2")])
def test_two_ranks_under_the_launcher_report_per_device(zero, parallelism, tmp_path):
    import subprocess

    output = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "llama_hw.launch", "--device", "cpu", "--nproc-per-node", "2",
               "--master-port", str(_free_port()), "--script", "benchmarks/bench.py", "--",
               "run", *TINY, "--seq-len", "32", "--micro-batch", "2", "--steps", "2", "--warmup", "1",
               "--zero", zero, "--output", str(output), "--json"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = [json.loads(line) for line in output.read_text().splitlines()]  # rank 0 writes, once
    assert record["device"]["count"] == 2
    assert record["config"]["world_size"] == 2  # Trainer's own world size: gradients really are averaged
    assert record["parallelism"] == parallelism and record["config"]["global_batch"] == 4
    assert record["tokens"]["processed"] == 2 * 2 * 2 * 32  # 2 ranks x 2 measured steps x 2 rows x 32
    seconds = sum(record["step_times_s"])
    assert record["tokens_per_s_per_device"]["processed"] == pytest.approx(record["tokens"]["processed"] / seconds / 2)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
