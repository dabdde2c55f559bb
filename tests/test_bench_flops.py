"""Model FLOPs and MFU arithmetic, and the preset shapes, checked against hand calculations and real modules."""

from __future__ import annotations

import pytest
import torch

from llama_hw.bench.flops import FlopsModel, body_matmul_parameters, matmul_parameters, mfu
from llama_hw.bench.presets import PRESETS, ShapeOverrides, llama_ffn_size, preset_shape
from llama_hw.errors import UsageError


def test_llama_7b_flops_per_token_at_2048_by_hand():
    shape = PRESETS["llama-7b"]
    # Per layer: q, k, v, o are 4096 x 4096; gate, up, down are 4096 x 11008. Head: 32000 x 4096.
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008  # 67,108,864 + 135,266,304
    n = 32 * per_layer + 32000 * 4096
    assert per_layer == 202_375_168 and n == 6_607_077_376 == matmul_parameters(shape)
    six_n = 6 * n  # 39,642,464,256
    attention = 12 * 32 * 4096 * 2048  # 12 x layers x hidden x context = 3,221,225,472
    assert FlopsModel.for_shape(shape).per_token(2048) == six_n + attention == 42_863_689_728


def test_the_7b_weight_count_adds_up_to_the_published_parameter_count():
    # Meta's LLaMA-7B has 6,738,415,616 parameters: the matrices, the input embedding and the RMSNorm gains.
    shape = PRESETS["llama-7b"]
    embedding, norms = 32000 * 4096, (2 * 32 + 1) * 4096
    assert matmul_parameters(shape) + embedding + norms == 6_738_415_616


def test_mfu_of_a_7b_run_by_hand():
    per_token = FlopsModel.for_shape(PRESETS["llama-7b"]).per_token(2048)
    # 2990 tokens/s/device (the seed's NPU figure) x 42.86 GFLOP = 128.2 TFLOP/s; over a 354 TFLOP/s peak:
    assert mfu(2990 * per_token, 354) == pytest.approx(2990 * 42_863_689_728 / 354e12)
    assert mfu(2990 * per_token, 354) == pytest.approx(0.3620, abs=1e-4)
    assert mfu(1e12, None) is None and mfu(1e12, 0) is None


def test_lora_skips_the_weight_gradients_of_frozen_matrices():
    shape = preset_shape("bench-20m")
    body = body_matmul_parameters(shape)
    head = 32000 * 256
    adapters = 10_000
    lora = FlopsModel.for_shape(shape, adapter_parameters=adapters, full=False)
    assert lora.body == 4 * (body + adapters) + 2 * adapters  # forward + input gradients everywhere
    assert lora.head == 4 * head  # the head is frozen too
    full = FlopsModel.for_shape(shape)
    assert full.body == 6 * body and full.head == 6 * head


def test_executed_work_and_model_flops_of_a_padded_batch_by_hand():
    """Two right-padded rows of 6 positions holding 4 and 6 tokens, 5 labelled targets (tests/test_bench_tokens)."""
    from llama_hw.bench.tokens import TokenCounts

    model = FlopsModel(body=10.0, head=100.0, attention_coefficient=1.0)
    counts = TokenCounts(processed=12, effective=10, trained=5, samples=2, effective_squared=16 + 36,
                         attention_pairs=10 + 21)  # fmt: skip
    # the layers run on all 12 positions; the chunked head on the 5 labelled ones, the stock head on all 12
    assert model.executed(counts, head_labelled_only=True) == 10 * 12 + 100 * 5 + 31
    assert model.executed(counts, head_labelled_only=False) == 10 * 12 + 100 * 12 + 31
    # model FLOPs: the layers on the 10 real tokens, the head on the 5 trained ones, each text's causal triangle
    assert model.model_flops(counts) == 10 * 10 + 100 * 5 + (10 + 21)
    assert model.attention(counts) == 31 and model.head_rows(counts, True) == 5


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_formula_counts_every_linear_weight_of_the_real_module(name):
    """Built on the meta device (no memory): the decoder and head matrices are nn.Linear weights."""
    from transformers import AutoModelForCausalLM

    shape = PRESETS[name]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape.llama_config())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert linear == matmul_parameters(shape)
    assert model.config.num_key_value_heads == shape.num_key_value_heads


def test_bench_20m_is_the_issues_model():
    shape = preset_shape("bench-20m")
    assert (shape.vocab_size, shape.hidden_size, shape.num_hidden_layers, shape.num_attention_heads,
            shape.num_key_value_heads, shape.intermediate_size, shape.max_position_embeddings) == (
        32000, 256, 4, 4, 4, 688, 2048)  # fmt: skip


def test_shrinking_keeps_head_size_and_group_ratio():
    shape = preset_shape("llama2-70b", ShapeOverrides(layers=2, hidden=1024))
    assert shape.num_hidden_layers == 2 and shape.head_dim == 128
    assert (shape.num_attention_heads, shape.num_key_value_heads) == (8, 1)  # 64:8 kept as 8:1
    assert shape.intermediate_size == llama_ffn_size(1024) == 2816
    assert llama_ffn_size(4096) == 11008  # Meta's rule reproduces LLaMA-7B's MLP


@pytest.mark.parametrize("overrides, message", [
    (ShapeOverrides(hidden=100, heads=3), "not divisible by"),
    (ShapeOverrides(hidden=768, heads=6, kv_heads=4), "not a multiple of"),
    (ShapeOverrides(layers=0), "--layers must be a positive integer"),
])  # fmt: skip
def test_impossible_shapes_are_usage_errors(overrides, message):
    with pytest.raises(UsageError, match=message):
        preset_shape("llama-7b", overrides)


def test_an_unknown_preset_lists_the_presets():
    with pytest.raises(UsageError, match="llama2-70b"):
        preset_shape("llama-8b")


def test_preset_weights_come_from_the_host_generator_whatever_the_device_rng():
    """The same seed gives the same weights on every device type: they are drawn on the host."""
    from llama_hw.bench.session import preset_model

    shape = preset_shape("bench-20m", ShapeOverrides(layers=1, hidden=32, vocab=100))
    torch.manual_seed(123)  # the default generator's state must not matter
    model = preset_model(shape, torch.float32, torch.device("cpu"), seed=0)
    generator = torch.Generator().manual_seed(0)
    expected_embedding = torch.randn(100, 32, generator=generator) * 0.02
    torch.testing.assert_close(model.model.embed_tokens.weight, expected_embedding, rtol=0, atol=0)
    assert torch.equal(model.model.norm.weight, torch.ones(32))
