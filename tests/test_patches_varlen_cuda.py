"""CUDA packed rows without cross-document work, proven on CPU with the CUDA backend's patch selection.

- Without flash-attn: varlen_attention runs packed rows as one transformers sdpa call per document (chosen
  over FlexAttention by measurement, see llama_hw/patches/varlen_attention.py); the patched model equals
  the unpatched eager model in fp32 (logits, loss, every gradient, <= 1e-5) and no dense mask is built.
  Padded batches keep one dense masked call there (the CPU split rule is not carried over).
- With flash-attn installed: packed rows reach `flash_attn_varlen_func` with the documents' cu_seqlens
  (from llama_hw's collator or from restarting position_ids) and no 4-D mask is built. flash_attn itself
  is a test double at the package boundary, like the availability mocks of test_patches_registry.py: a
  per-document causal sdpa that records what it receives.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from llama_hw.backends.cuda import CudaBackend
from llama_hw.patches import apply_patches, torch_attention
from patches_support import (
    KEEP_LOGITS,
    assert_same,
    forward_backward,
    fresh_copy,
    padded_batch,
    random_gqa_llama,
    single_thread,  # noqa: F401 - autouse fixture
)

ROW = 32
DOCUMENTS = [[10, 21, 1], [ROW]]  # unequal documents ending in a one-token one; a document filling its row
CU_SEQLENS = [0, 10, 31, 32, 64]


@pytest.fixture(scope="module")
def gqa_model():
    return random_gqa_llama()


@pytest.fixture
def sdpa_calls(monkeypatch):
    """The query length of every transformers sdpa call."""
    from transformers.integrations import sdpa_attention

    calls = []
    original = sdpa_attention.sdpa_attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        calls.append((query.shape[2], None if attention_mask is None else attention_mask.dim()))
        return original(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", spy)
    return calls


def refuse_dense_masks(monkeypatch):
    import transformers.masking_utils as masking_utils

    def refuse(*args, **kwargs):
        raise AssertionError("a dense 4-D mask was built")

    for name in ("sdpa_mask", "eager_mask"):
        monkeypatch.setattr(masking_utils, name, refuse)


def packed_inputs(vocab: int, with_boundaries: bool):
    ids = torch.randint(3, vocab, (len(DOCUMENTS), ROW), generator=torch.Generator().manual_seed(7))
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in DOCUMENTS])
    inputs = {"input_ids": ids, "position_ids": position_ids, "labels": ids.clone()}
    if with_boundaries:  # what llama_hw's packed collator adds
        cu = torch.tensor(CU_SEQLENS, dtype=torch.int32)
        inputs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=ROW, max_length_k=ROW)
    return inputs


def run(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, use_cache=False)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


def without_flash_attn(monkeypatch):
    monkeypatch.setattr(torch_attention, "is_flash_attn_available", lambda: False)


@pytest.mark.parametrize("with_boundaries", [False, True], ids=["position_ids", "cu_seq_lens"])
def test_packed_rows_run_one_sdpa_call_per_document_and_equal_eager(gqa_model, sdpa_calls, monkeypatch,
                                                                     with_boundaries):  # fmt: skip
    without_flash_attn(monkeypatch)
    model = fresh_copy(gqa_model).train()
    inputs = packed_inputs(model.config.vocab_size, with_boundaries)
    reference = run(model, {k: v for k, v in inputs.items() if not k.startswith(("cu_", "max_"))})
    report = apply_patches(model, CudaBackend(), "train", selection=KEEP_LOGITS)
    try:
        assert {"sdpa_attention", "varlen_attention"} <= set(report.applied)
        refuse_dense_masks(monkeypatch)
        patched = run(model, inputs)
    finally:
        report.revert()
    layers = model.config.num_hidden_layers
    assert sdpa_calls == [(n, None) for n in (10, 21, 1, 32)] * layers  # per document, no mask, is_causal
    close = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(patched[0], reference[0], **close)
    torch.testing.assert_close(patched[1], reference[1], **close)
    for name, grad in reference[2].items():
        torch.testing.assert_close(patched[2][name], grad, **close, msg=lambda m, n=name: f"{n}: {m}")


def test_padded_batches_on_cuda_keep_one_dense_call(gqa_model, sdpa_calls, monkeypatch):
    without_flash_attn(monkeypatch)
    model = fresh_copy(gqa_model).train()
    ids, mask = padded_batch([ROW, 9, 20], ROW, "right", model.config.vocab_size)
    reference = forward_backward(model, ids, mask)
    report = apply_patches(model, CudaBackend(), "train", selection=KEEP_LOGITS)
    try:
        patched = forward_backward(model, ids, mask)
    finally:
        report.revert()
    assert_same(patched, reference)
    assert sdpa_calls == [(ROW, 4)] * model.config.num_hidden_layers


def test_the_cuda_report_says_packed_rows_run_varlen(gqa_model, monkeypatch):
    without_flash_attn(monkeypatch)
    report = apply_patches(fresh_copy(gqa_model), CudaBackend(), "train", selection=KEEP_LOGITS)
    report.revert()
    lines = {line.split()[1]: line for line in report.render().splitlines()[1:]}
    assert "packed rows varlen: transformers' sdpa per document" in lines["varlen_attention"]
    assert "dense rows" in lines["sdpa_attention"]


# -- with flash-attn ------------------------------------------------------------------------------


@pytest.fixture
def fake_flash_attn(monkeypatch):
    """flash_attn 2 at its package boundary: varlen calls are recorded and computed per document."""
    import transformers.modeling_flash_attention_utils as fa_utils
    from transformers import LlamaForCausalLM

    received = []

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, deterministic=False, return_attn_probs=False,
                               block_table=None):  # fmt: skip
        received.append({"cu_seqlens_q": cu_seqlens_q.tolist(), "cu_seqlens_k": cu_seqlens_k.tolist(),
                         "max_seqlen_q": int(max_seqlen_q), "causal": causal, "tokens": q.shape[0]})  # fmt: skip
        edges = cu_seqlens_q.tolist()
        outs = []
        for start, end in zip(edges[:-1], edges[1:]):
            piece = [t[start:end].transpose(0, 1).float() for t in (q, k, v)]
            out = F.scaled_dot_product_attention(*piece, is_causal=causal, scale=softmax_scale, enable_gqa=True)
            outs.append(out.transpose(0, 1).to(q.dtype))
        return torch.cat(outs)

    def flash_attn_func(*args, **kwargs):
        raise AssertionError("packed rows must take the varlen path")

    package = types.ModuleType("flash_attn")
    package.flash_attn_varlen_func, package.flash_attn_func = flash_attn_varlen_func, flash_attn_func
    package.flash_attn_with_kvcache = flash_attn_func
    padding = types.ModuleType("flash_attn.bert_padding")
    padding.pad_input, padding.unpad_input = fa_utils._pad_input, fa_utils._unpad_input
    package.bert_padding = padding
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.bert_padding", padding)
    monkeypatch.setattr(fa_utils, "is_flash_attn_2_available", lambda *a, **k: True)
    monkeypatch.setattr(fa_utils, "_loaded_implementation", None)
    monkeypatch.setattr(torch_attention, "is_flash_attn_available", lambda: True)
    # transformers checks for a CUDA device when flash_attention_2 is set; this machine has none.
    monkeypatch.setattr(LlamaForCausalLM, "_check_and_adjust_attn_implementation",
                        lambda self, name, **kwargs: name)  # fmt: skip
    return received


@pytest.mark.parametrize("with_boundaries", [False, True], ids=["position_ids", "cu_seq_lens"])
def test_with_flash_attn_packed_rows_reach_its_varlen_function(gqa_model, fake_flash_attn, monkeypatch,
                                                               with_boundaries):  # fmt: skip
    model = fresh_copy(gqa_model).to(torch.bfloat16).eval()
    inputs = packed_inputs(model.config.vocab_size, with_boundaries)
    inputs.pop("labels")
    with torch.no_grad():
        # use_cache=False: with a cache transformers does not look for packed rows in position_ids
        reference = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
        report = apply_patches(model, CudaBackend(), "train", selection=KEEP_LOGITS)
        try:
            assert "flash_attention_2" in report.applied and "varlen_attention" in report.skipped
            refuse_dense_masks(monkeypatch)
            patched = model(**inputs, use_cache=False).logits
        finally:
            report.revert()
    layers = model.config.num_hidden_layers
    assert len(fake_flash_attn) == layers
    for call in fake_flash_attn:
        assert call["cu_seqlens_q"] == call["cu_seqlens_k"] == CU_SEQLENS
        assert call["max_seqlen_q"] == ROW and call["causal"] and call["tokens"] == 2 * ROW
    torch.testing.assert_close(patched.float(), reference.float(), rtol=0, atol=5e-2)  # bf16 rounding
    reason = next(o.reason for o in report.outcomes if o.name == "varlen_attention")
    assert reason.startswith("flash_attention_2 runs packed and padded rows varlen itself")
