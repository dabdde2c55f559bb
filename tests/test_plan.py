"""`llama-hw plan`: parameter and memory formulas by hand, DeepSpeed's estimators, enumeration, CLI contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llama_hw.bench.presets import PRESETS, ModelShape
from llama_hw.plan.job import Job
from llama_hw.plan.memory import Configuration, Rows, activation_bytes, estimate, logits_bytes, model_states
from llama_hw.plan.recipe import build_parser, build_plan, plan_dict
from llama_hw.plan.search import configurations

GIB = 1024**3
TINY = ModelShape(hidden_size=64, intermediate_size=172, num_hidden_layers=5, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=512, max_position_embeddings=512)  # fmt: skip


def plan_json(*argv: str) -> dict:
    return plan_dict(build_plan(build_parser().parse_args([*argv, "--json"])))


def test_parameter_counts_equal_a_meta_device_model():
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    for name in ("llama-7b", "llama2-70b", "llama3-8b"):
        with init_empty_weights():
            model = LlamaForCausalLM(PRESETS[name].llama_config())
        assert Job(PRESETS[name]).parameters().total == sum(p.numel() for p in model.parameters()), name


def test_lora_adapter_count_by_hand():
    # r x (in + out) per adapted matrix: q 64->64, k 64->32, v 64->32, o 64->64, gate/up 64->172, down 172->64
    job = Job(TINY, finetuning_type="lora", lora_r=4)
    per_layer = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 172) * 2 + (172 + 64))
    assert job.parameters().adapter == 5 * per_layer == job.parameters().trainable


@pytest.mark.parametrize("devices", [1, 8, 16])
def test_full_model_states_equal_deepspeed_estimators(devices):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    job = Job(PRESETS["llama-7b"], precision="bf16", world_size=devices, nodes=max(1, devices // 8))
    counts = job.parameters()
    p, largest = counts.total, counts.largest_layer
    nodes, per_node = job.nodes, job.devices_per_node

    def device_bytes(engine, offload="none"):
        return sum(model_states(job, Configuration(engine, offload))[:3])

    _, gpu = estimate_zero2_model_states_mem_needs(p, per_node, nodes, cpu_offload=False)
    assert device_bytes("zero2") == pytest.approx(gpu, abs=8)
    cpu, gpu = estimate_zero2_model_states_mem_needs(p, per_node, nodes, cpu_offload=True)
    assert device_bytes("zero2", "optimizer") == gpu
    assert model_states(job, Configuration("zero2", "optimizer"))[3] == pytest.approx(cpu, rel=1e-6)
    _, gpu, _ = estimate_zero3_model_states_mem_needs(p, largest, per_node, nodes, cpu_offload=False)
    assert device_bytes("zero3") == pytest.approx(gpu, abs=8)
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(p, largest, per_node, nodes, cpu_offload=True,
                                                        cpu_offload_params=False)  # fmt: skip
    assert device_bytes("zero3", "optimizer") == pytest.approx(gpu, abs=8)
    assert model_states(job, Configuration("zero3", "optimizer"))[3] == pytest.approx(cpu, rel=1e-6)
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(p, largest, per_node, nodes, cpu_offload=True,
                                                        cpu_offload_params=True)  # fmt: skip
    assert device_bytes("zero3", "optimizer+parameters") == gpu
    assert model_states(job, Configuration("zero3", "optimizer+parameters"))[3] == pytest.approx(cpu, rel=1e-6)


def test_ddp_model_states_by_hand():
    job = Job(TINY, precision="fp32", world_size=2)
    p = job.parameters().total
    assert model_states(job, Configuration("ddp")) == (4 * p, 4 * p, 8 * p, 0)
    amp = Job(TINY, precision="bf16")  # autocast over fp32 master weights keeps 16-bit copies too
    assert model_states(amp, Configuration("ddp"))[0] == 6 * p
    lora = Job(TINY, finetuning_type="lora", precision="bf16")
    t = lora.parameters().trainable
    assert model_states(lora, Configuration("ddp")) == (2 * p + 4 * t, 4 * t, 8 * t, 0)


def test_activations_by_hand():
    h, kv, i, heads, layers, tokens = 64, 32, 172, 8, 5, 2 * 100
    rows = Rows(max_len=100, mean_len=100)
    full = Job(TINY, precision="fp32")
    # per layer and token: 2 RMSNorms (4h fp32 input + 4h normalised + 4h projection input), q/k/v 4(h+2kv),
    # attention output 4h, o_proj input 4h, log-sum-exp 4 per head, SwiGLU 4 x 4I; plus one layer's gradients
    layer = 2 * 12 * h + 4 * (h + 2 * kv) + 4 * h + 4 * heads + 4 * h + 16 * i
    assert activation_bytes(full, Configuration(micro_batch=2), rows) == (layers + 1) * layer * tokens
    # checkpointing: each layer's input, one recomputed layer, its gradients
    expected = layers * 4 * h * tokens + 2 * layer * tokens
    assert activation_bytes(full, Configuration(micro_batch=2, gradient_checkpointing=True), rows) == expected
    lora = Job(TINY, finetuning_type="lora", precision="bf16", lora_target=("q_proj", "down_proj"))
    lora_layer = 2 * 4 * h + 2 * (h + 2 * kv) + 2 * h + 4 * heads + 3 * 2 * i + 5 * h + 5 * i
    assert activation_bytes(lora, Configuration(micro_batch=2), rows) == (layers + 1) * lora_layer * tokens


def test_head_memory_stock_versus_chunked():
    job = Job(PRESETS["llama3-8b"], precision="bf16")
    rows = Rows(max_len=2048, mean_len=2048)
    stock = logits_bytes(job, Configuration(micro_batch=4, chunked_head=False), rows)
    assert stock == 12 * 4 * 2048 * 128256  # fp32 log-softmax, its gradient, the logits' gradient: 12 GiB
    assert logits_bytes(job, Configuration(micro_batch=4), rows) == 12 * 256 * 128256


def test_enumeration_and_recommendation():
    single = configurations(Job(TINY), (False,), max_micro_batch=4)
    engines = {(c.engine, c.offload) for c in single}
    assert ("zero2", "none") not in engines and ("ddp", "none") in engines and ("zero3", "optimizer") in engines
    assert len(single) == len(engines) * 2 * 3 * 2  # checkpointing x micro batch 1, 2, 4 x head
    qlora = configurations(Job(TINY, finetuning_type="qlora"), (False,), max_micro_batch=1)
    assert {c.engine for c in qlora} == {"ddp"}
    data = plan_json("--model", "llama-7b", "--devices", "8", "--device-product", "A100-80GB")
    recommended = data["configurations"][data["recommended"]]
    assert recommended["fits"]
    fitting = [c for c in data["configurations"] if c["fits"]]
    assert recommended["tokens_per_s_per_device"] == max(c["tokens_per_s_per_device"] for c in fitting)
    assert data["recommended_flags"] == recommended["flags"]
    for config in data["configurations"]:
        memory = config["memory_bytes"]
        parts = [k for k in memory if k not in ("total", "host_offload")]
        assert memory["total"] == sum(memory[k] for k in parts)
        assert config["step_time_s"] > 0 and set(config) >= {"flags", "fits", "tokens_per_s_per_device"}


def test_full_finetuning_7b_needs_sharding_on_80gb():
    data = plan_json("--model", "llama-7b", "--devices", "8", "--device-product", "A100-80GB")
    by = {(c["engine"], c["offload"], c["gradient_checkpointing"], c["micro_batch"], c["chunked_head"]): c
          for c in data["configurations"]}  # fmt: skip
    assert not by[("ddp", "none", True, 1, True)]["fits"]  # 16 bytes per parameter: 100 GiB of model states
    assert by[("zero3", "none", True, 1, True)]["fits"]
    assert "--deepspeed" in by[("zero3", "none", True, 1, True)]["flags"]


def test_nothing_fits_exits_1_with_a_note(tmp_path):
    result = subprocess.run([sys.executable, "-m", "llama_hw.plan", "--model", "llama-65b", "--device-product",
                             "RTX4090", "--finetuning_type", "full", "--host-memory", "512"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no configuration fits" in result.stdout
    # the published case: 7B full fine-tuning in 24 GB with DeepSpeed offload (host RAM for the offloaded states)
    data = plan_json("--model", "llama-7b", "--device-product", "RTX4090", "--precision", "fp16",
                     "--host-memory", "256")  # fmt: skip
    assert data["configurations"][data["recommended"]]["offload"] != "none"


@pytest.mark.parametrize("argv, message", [
    (["--model", "llama-7b", "--device-product", "Z80"], "--device-product Z80: unknown product"),
    (["--model", "nowhere"], "--model nowhere: not a preset"),
    (["--model", "llama-7b", "--device-product", "910A", "--precision", "bf16"], "910A has no bf16"),
    (["--model", "llama-7b", "--data_path", "x.json"], "--data_path needs --tokenizer"),
    (["--model", "llama-7b", "--devic", "cpu"], "unrecognized arguments: --devic"),
])  # fmt: skip
def test_errors_are_one_line(argv, message):
    result = subprocess.run([sys.executable, "-m", "llama_hw.plan", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_model_directory_config_only(stories260k_dir):
    # on CPU the runtime reserve is this process's own footprint (a whole test session's here): 16 GiB leave room
    data = plan_json("--model", str(stories260k_dir), "--device-memory", "16", "--device", "cpu", "--precision", "fp32")
    assert data["model"]["hidden_size"] == 64 and data["model"]["layers"] == 5
    assert data["device"]["memory_bytes"] == 16 * GIB and data["recommended"] is not None


def test_real_data_rows_pack_fuller_than_dynamic(shared_dir, llama2_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_HW_CACHE_DIR", str(tmp_path / "cache"))
    data = plan_json("--model", "bench-20m", "--device", "cpu", "--precision", "fp32", "--seq-len", "1024",
                     "--data_path", str(shared_dir / "data" / "alpaca" / "alpaca_en_demo.json"),
                     "--tokenizer", str(llama2_tokenizer_dir), "--max-micro-batch", "4")  # fmt: skip
    assert data["tokens_per_epoch"] > 100_000
    speed = {(c["packing"], c["micro_batch"]): c["tokens_per_s_per_device"] for c in data["configurations"]
             if c["engine"] == "ddp" and not c["gradient_checkpointing"] and c["chunked_head"]}  # fmt: skip
    assert speed[(True, 4)] > 1.2 * speed[(False, 4)]  # the layers run on padding too
    assert all("epoch_time_s" in c for c in data["configurations"])


def test_estimate_total_includes_reserve():
    job = Job(TINY, precision="fp32")
    memory = estimate(job, Configuration(), Rows(64, 64), runtime_reserve=GIB)
    assert memory.allocator_reserve > GIB and memory.total > memory.allocator_reserve


def test_hub_id_reads_the_cached_config_only(tmp_path, monkeypatch, stories260k_dir):
    from huggingface_hub import constants

    from test_models_hub import build_hub_cache

    cache = tmp_path / "hub"
    build_hub_cache(cache, "llama-hw-test/stories260K", stories260k_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = plan_json("--model", "llama-hw-test/stories260K", "--device-product", "A10", "--precision", "fp16")
    assert data["model"]["hidden_size"] == 64 and data["model"]["vocab_size"] == 512


def test_text_corpus_rows(tmp_path, monkeypatch, shared_dir, stories260k_dir):
    """A continued pre-training corpus (default cut: concatenated full rows, every token labelled)."""
    monkeypatch.setenv("LLAMA_HW_CACHE_DIR", str(tmp_path / "cache"))
    records = json.loads((shared_dir / "data" / "alpaca" / "alpaca_en_demo.json").read_text())[:200]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": r["output"]}) + "\n" for r in records))
    data = plan_json("--model", str(stories260k_dir), "--data_path", str(corpus), "--tokenizer", str(stories260k_dir),
                     "--device", "cpu", "--device-memory", "4", "--precision", "fp32", "--seq-len", "128",
                     "--max-micro-batch", "2")  # fmt: skip
    assert data["tokens_per_epoch"] > 10_000  # the whole corpus once, in 128-token rows
    full_rows = [c for c in data["configurations"] if not c["packing"] and c["micro_batch"] == 2]
    assert all(c["memory_bytes"]["activations"] > 0 for c in full_rows)
    assert data["recommended"] is not None
