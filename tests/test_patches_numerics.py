"""The Ascend patches change no number: patched LLaMA == unpatched eager LLaMA, on CPU with the fake torch_npu.

For a small random Llama with GQA (head size 64, so npu_rotary_mul runs too) and the real stories260K,
on a 910B (fused attention, RMSNorm, SwiGLU, rotary) and a 910A (fused softmax, rotary): logits on real
tokens, the loss and every parameter's gradient match within 1e-5 in fp32 for no padding, right padding,
left padding and a batch of different lengths; greedy generation with a KV cache gives the same tokens;
packed sequences stay separate. Each test also checks that the fused kernels actually ran.
"""

from __future__ import annotations

import types

import pytest
import torch

from llama_hw.backends.npu import NpuBackend
from llama_hw.patches import apply_patches
from patches_support import (
    KEEP_LOGITS,
    CHIPS,
    PADDING_CASES,
    assert_same,
    fresh_copy,
    forward_backward,
    padded_batch,
    random_gqa_llama,
    single_thread,  # noqa: F401 - autouse fixture
    spy_on_ops,
    stories260k,
)


@pytest.fixture(params=sorted(CHIPS), ids=lambda chip: f"npu{chip}")
def npu(request, fake_torch_npu, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_NAME", CHIPS[request.param])
    for name in ("LLAMA_HW_PATCHES", "DS_ACCELERATOR"):
        monkeypatch.delenv(name, raising=False)
    calls = spy_on_ops(monkeypatch, fake_torch_npu())
    return types.SimpleNamespace(backend=NpuBackend(), chip=request.param, calls=calls)


@pytest.fixture(scope="module")
def random_model():
    return random_gqa_llama()


@pytest.fixture(scope="module")
def stories_model(stories260k_dir):
    return stories260k(stories260k_dir)


@pytest.fixture(params=["random_gqa", "stories260k"])
def model(request):
    source = {"random_gqa": "random_model", "stories260k": "stories_model"}[request.param]
    return fresh_copy(request.getfixturevalue(source))


def expected_kernel_calls(model, chip: str, batch: int, seq: int) -> dict[str, int]:
    """How many times one forward should call each op: per layer, and where the per-call limits allow."""
    config = model.config
    layers, head_dim = config.num_hidden_layers, config.hidden_size // config.num_attention_heads
    rotary = head_dim % 64 == 0 and batch * config.num_attention_heads <= 8 * seq
    calls = {"npu_rotary_mul": 2 * layers if rotary else 0}
    if chip == "910B":
        calls.update(npu_fusion_attention=layers, npu_rms_norm=2 * layers + 1, npu_swiglu=layers)
    else:
        calls.update(npu_scaled_masked_softmax=layers if seq % 32 == 0 else 0)
    return calls


@pytest.mark.parametrize("case", list(PADDING_CASES))
def test_logits_and_every_gradient_equal_the_unpatched_eager_model(npu, model, case):
    lengths, side = PADDING_CASES[case]
    ids, mask = padded_batch(lengths, 64, side, model.config.vocab_size)
    model.train()
    reference = forward_backward(model, ids, mask)
    report = apply_patches(model, npu.backend, "train", selection=KEEP_LOGITS)
    try:
        patched = forward_backward(model, ids, mask)
    finally:
        report.revert()
    assert_same(patched, reference)
    for op, count in expected_kernel_calls(model, npu.chip, 3, 64).items():
        assert npu.calls[op] == count, (op, dict(npu.calls))
    if npu.chip == "910B":  # right padding runs per row in TND, left padding on the full mask, none causal
        mode = {"no_padding": "BNSD sparse_mode=3", "left_padding": "BNSD sparse_mode=0"}.get(case, "TND sparse_mode=3")
        assert npu.calls[mode] == model.config.num_hidden_layers, dict(npu.calls)
        if mode.startswith("TND"):
            assert npu.calls["TND actual_seq_qlen"] == torch.tensor(lengths).cumsum(0).tolist()


def test_greedy_generation_with_kv_cache_gives_the_same_tokens(npu, model):
    # Left-padded 32-token prompts: fused softmax runs the prefill, and decoding (q_len 1) takes the plain
    # softmax, which the fake kernel would refuse, so the same patched model serves both.
    ids, mask = padded_batch([32, 27, 19], 32, "left", model.config.vocab_size, seed=3)
    model.eval()
    settings = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    reference = model.generate(input_ids=ids, attention_mask=mask, **settings)
    report = apply_patches(model, npu.backend, "infer")
    try:
        patched = model.generate(input_ids=ids, attention_mask=mask, **settings)
    finally:
        report.revert()
    assert torch.equal(patched, reference)
    layers = model.config.num_hidden_layers
    if npu.chip == "910B":
        assert npu.calls["npu_fusion_attention"] == 8 * layers  # prefill + 7 decode steps
    else:
        assert npu.calls["npu_scaled_masked_softmax"] == layers  # the prefill only


def test_patched_stories260k_tells_its_story(npu, stories_model, stories260k_dir):
    import sentencepiece

    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(stories260k_dir / "tokenizer.model"))
    model = fresh_copy(stories_model).eval()
    ids = torch.tensor([[1, *tokenizer.encode("Once upon a time")]])
    report = apply_patches(model, npu.backend, "infer")
    try:
        out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    finally:
        report.revert()
    assert tokenizer.decode(out[0].tolist()).startswith("Once upon a time, there was a little girl named Lily")
    if npu.chip == "910B":
        assert npu.calls["npu_fusion_attention"] == 12 * stories_model.config.num_hidden_layers
    else:  # a 5-token prompt is below the softmax kernel's 32: every call takes the plain path
        assert "npu_fused_softmax" in report.applied and npu.calls["npu_scaled_masked_softmax"] == 0


def test_packed_sequences_stay_separate(npu, random_model):
    """position_ids restarting per sequence, no attention_mask: transformers' packed path reaches the kernel."""
    model = fresh_copy(random_model).eval()
    lengths = [20, 28, 16]
    ids = torch.randint(3, model.config.vocab_size, (1, sum(lengths)), generator=torch.Generator().manual_seed(5))
    position_ids = torch.cat([torch.arange(length) for length in lengths]).unsqueeze(0)
    with torch.no_grad():
        bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
        separate = torch.cat(
            [model(input_ids=ids[:, a:b], use_cache=False).logits for a, b in zip(bounds, bounds[1:])], dim=1
        )
        eager_packed = model(input_ids=ids, position_ids=position_ids, use_cache=False).logits
        report = apply_patches(model, npu.backend, "train", selection=KEEP_LOGITS)
        try:
            patched_packed = model(input_ids=ids, position_ids=position_ids, use_cache=False).logits
        finally:
            report.revert()
    torch.testing.assert_close(eager_packed, separate, rtol=0, atol=1e-5)
    torch.testing.assert_close(patched_packed, separate, rtol=0, atol=1e-5)
    kernel = "npu_fusion_attention" if npu.chip == "910B" else "npu_scaled_masked_softmax"
    assert npu.calls[kernel] == model.config.num_hidden_layers


def test_mixed_precision_autocast_runs_the_kernels_in_one_dtype(npu, random_model):
    """Under autocast (Trainer --bf16) q, k come out of rotary embedding in float32 and v in bf16: the
    attention kernel gets one dtype, like sdpa, and the result stays within bf16 rounding of eager."""
    model = fresh_copy(random_model)
    ids, mask = padded_batch([64, 50, 64], 64, "right", model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = forward_backward(model, ids, mask)
        report = apply_patches(model, npu.backend, "train", selection=KEEP_LOGITS)
        try:
            patched = forward_backward(model, ids, mask)
        finally:
            report.revert()
    torch.testing.assert_close(patched.loss, reference.loss, rtol=0, atol=2e-2)
    kernel = "npu_fusion_attention" if npu.chip == "910B" else "npu_scaled_masked_softmax"
    assert npu.calls[kernel] == model.config.num_hidden_layers
