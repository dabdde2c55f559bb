"""Ascend varlen attention: packed and right-padded rows reach npu_fusion_attention in TND, per document.

On a 910B (fake torch_npu whose TND follows the op documentation, tests/test_patches_fake_ops.py), the
patched model equals the unpatched eager model in fp32 (logits, loss, every gradient, <= 1e-5) for packed
rows of unequal documents, a document filling a whole row, a one-token document, right padding with a
one-token row, GQA; every call is TND with sparse_mode 3, cumulative ends and the compressed 2048x2048
mask, and no S x S mask is built. Left padding and KV-cache decoding keep BNSD.
"""

from __future__ import annotations

import pytest
import torch

from llama_hw.backends.npu import NpuBackend
from llama_hw.patches import apply_patches
from patches_support import (
    KEEP_LOGITS,
    assert_same,
    forward_backward,
    fresh_copy,
    padded_batch,
    random_gqa_llama,
    single_thread,  # noqa: F401 - autouse fixture
    spy_on_ops,
)

ROW = 32
# Two packed rows: three unequal documents ending in a one-token one, then one document filling its row.
DOCUMENTS = [[10, 21, 1], [ROW]]


@pytest.fixture
def npu(fake_torch_npu, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_NAME", "Ascend910B3")
    for name in ("LLAMA_HW_PATCHES", "DS_ACCELERATOR"):
        monkeypatch.delenv(name, raising=False)
    torch_npu = fake_torch_npu()
    calls = spy_on_ops(monkeypatch, torch_npu)
    masks = []
    original = torch_npu.npu_fusion_attention

    def record_mask(*args, **kwargs):
        masks.append(kwargs.get("atten_mask"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_npu, "npu_fusion_attention", record_mask)
    return calls, masks


@pytest.fixture(scope="module")
def gqa_model():
    return random_gqa_llama()


@pytest.fixture
def no_dense_mask(monkeypatch):
    """Fail if anything builds transformers' dense [B, 1, S, S] mask while the patch is applied."""
    import transformers.masking_utils as masking_utils

    def refuse(*args, **kwargs):
        raise AssertionError("a dense S x S mask was built")

    for name in ("sdpa_mask", "eager_mask"):
        monkeypatch.setattr(masking_utils, name, refuse)
    for mapping in (masking_utils.AttentionMaskInterface._global_mapping,):
        for name in ("sdpa", "eager"):
            monkeypatch.setitem(mapping, name, refuse)


def packed_inputs(vocab: int, with_boundaries: bool):
    ids = torch.randint(3, vocab, (len(DOCUMENTS), ROW), generator=torch.Generator().manual_seed(7))
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in DOCUMENTS])
    lengths = [n for row in DOCUMENTS for n in row]
    inputs = {"input_ids": ids, "position_ids": position_ids, "labels": ids.clone()}
    if with_boundaries:  # what llama_hw's packed collator adds (transformers' flash-attention kwargs)
        cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
        inputs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    return inputs, lengths


def packed_forward_backward(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, use_cache=False)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


@pytest.mark.parametrize("with_boundaries", [False, True], ids=["position_ids", "cu_seq_lens"])
def test_packed_rows_run_per_document_in_tnd_and_equal_eager(npu, gqa_model, with_boundaries, monkeypatch):
    calls, masks = npu
    model = fresh_copy(gqa_model).train()
    inputs, lengths = packed_inputs(model.config.vocab_size, with_boundaries)
    reference = packed_forward_backward(model, {k: v for k, v in inputs.items() if not k.startswith(("cu_", "max_"))})
    report = apply_patches(model, NpuBackend(), "train", selection=KEEP_LOGITS)
    try:
        import transformers.masking_utils as masking_utils

        monkeypatch.setattr(masking_utils, "sdpa_mask", lambda *a, **k: pytest.fail("dense mask built"))
        patched = packed_forward_backward(model, inputs)
    finally:
        report.revert()
    layers = model.config.num_hidden_layers
    assert calls["TND sparse_mode=3"] == calls["npu_fusion_attention"] == layers, dict(calls)
    assert calls["TND actual_seq_qlen"] == calls["TND actual_seq_kvlen"] == [10, 31, 32, 64]  # ends, no leading 0
    assert all(tuple(mask.shape) == (2048, 2048) for mask in masks)
    close = {"rtol": 1e-5, "atol": 1e-5}
    for mine, theirs in zip(patched[:2], reference[:2]):
        torch.testing.assert_close(mine, theirs, **close)
    assert patched[2].keys() == reference[2].keys()
    for name, grad in reference[2].items():
        torch.testing.assert_close(patched[2][name], grad, **close, msg=lambda m, n=name: f"{n}: {m}")


def test_right_padding_with_a_one_token_row_is_unpadded_into_tnd(npu, gqa_model):
    calls, masks = npu
    model = fresh_copy(gqa_model).train()
    lengths = [ROW, 1, 19]  # a full row, a one-token row, a padded row
    ids, mask = padded_batch(lengths, ROW, "right", model.config.vocab_size, seed=4)
    reference = forward_backward(model, ids, mask)
    report = apply_patches(model, NpuBackend(), "train", selection=KEEP_LOGITS)
    try:
        patched = forward_backward(model, ids, mask)
    finally:
        report.revert()
    assert_same(patched, reference)
    assert calls["TND sparse_mode=3"] == model.config.num_hidden_layers, dict(calls)
    assert calls["TND actual_seq_qlen"] == [32, 33, 52]  # T = 52 real tokens: padding is never computed
    assert all(tuple(mask.shape) == (2048, 2048) for mask in masks)


def test_no_dense_mask_is_built_for_padded_or_packed_rows(npu, gqa_model, no_dense_mask):
    model = fresh_copy(gqa_model).eval()
    ids, mask = padded_batch([ROW, 20], ROW, "right", model.config.vocab_size)
    inputs, _ = packed_inputs(model.config.vocab_size, with_boundaries=False)
    report = apply_patches(model, NpuBackend(), "train", selection=KEEP_LOGITS)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
            model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False)
    finally:
        report.revert()
    assert npu[0]["TND sparse_mode=3"] == 2 * model.config.num_hidden_layers


def test_left_padded_generation_with_a_kv_cache_keeps_bnsd(npu, gqa_model):
    calls, _ = npu
    model = fresh_copy(gqa_model).eval()
    ids, mask = padded_batch([16, 11], 16, "left", model.config.vocab_size, seed=3)
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    reference = model.generate(input_ids=ids, attention_mask=mask, **settings)
    report = apply_patches(model, NpuBackend(), "infer")
    try:
        patched = model.generate(input_ids=ids, attention_mask=mask, **settings)
    finally:
        report.revert()
    assert torch.equal(patched, reference)
    layers = model.config.num_hidden_layers
    assert calls["BNSD sparse_mode=0"] == 4 * layers and calls["TND sparse_mode=3"] == 0, dict(calls)


def test_unpadded_generation_decodes_in_bnsd_and_prefills_causal(npu, gqa_model):
    calls, _ = npu
    model = fresh_copy(gqa_model).eval()
    ids = torch.randint(3, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(9))
    reference = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    report = apply_patches(model, NpuBackend(), "infer")
    try:
        patched = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    finally:
        report.revert()
    assert torch.equal(patched, reference)
    layers = model.config.num_hidden_layers
    assert calls["BNSD sparse_mode=3"] == layers and calls["BNSD sparse_mode=0"] == 2 * layers, dict(calls)


def test_the_report_says_which_rows_run_varlen(npu, gqa_model):
    report = apply_patches(fresh_copy(gqa_model), NpuBackend(), "train", selection=KEEP_LOGITS)
    try:
        line = next(line for line in report.render().splitlines() if "npu_fusion_attention " in line)
    finally:
        report.revert()
    assert "varlen: TND per document" in line and "dense rows: BNSD" in line


def test_packed_rows_under_inference_mode(npu, gqa_model):
    """Inference tensors have no version counter: the per-forward reuse of the lengths must not need one."""
    calls, _ = npu
    model = fresh_copy(gqa_model).eval()
    inputs, _ = packed_inputs(model.config.vocab_size, with_boundaries=False)
    with torch.no_grad():
        reference = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
    report = apply_patches(model, NpuBackend(), "infer")
    try:
        with torch.inference_mode():
            patched = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
    finally:
        report.revert()
    torch.testing.assert_close(patched, reference, rtol=1e-5, atol=1e-5)
    assert calls["TND sparse_mode=3"] == model.config.num_hidden_layers


def test_varlen_layout_drops_empty_rows_and_leaves_left_padding_dense():
    from llama_hw.patches.npu_attention import varlen_layout

    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    lengths, keep = varlen_layout(mask, {}, 3, 4)
    assert lengths == [3, 1] and keep.tolist() == [0, 1, 2, 8]  # the all-padding row is no document
    assert varlen_layout(torch.tensor([[0, 1, 1, 1]]), {}, 1, 4) is None  # left padding: dense BNSD


def test_more_documents_than_one_call_takes_run_as_several_tnd_calls(npu, gqa_model, monkeypatch):
    """actual_seq_qlen holds at most 1K entries: a batch with more documents is split into groups of documents
    (here of at most 2, so that the 4 documents of DOCUMENTS need 2 calls a layer), still equal to eager."""
    import llama_hw.patches.npu_attention as npu_attention

    calls, _ = npu
    monkeypatch.setattr(npu_attention, "MAX_VARLEN_DOCUMENTS", 2)
    model = fresh_copy(gqa_model).train()
    inputs, _ = packed_inputs(model.config.vocab_size, with_boundaries=False)
    reference = packed_forward_backward(model, inputs)
    report = apply_patches(model, NpuBackend(), "train", selection=KEEP_LOGITS)
    try:
        patched = packed_forward_backward(model, inputs)
    finally:
        report.revert()
    assert calls["TND sparse_mode=3"] == 2 * model.config.num_hidden_layers, dict(calls)
    assert calls["TND actual_seq_qlen"] == [1, 33]  # the last group: the one-token document, the full row
    close = {"rtol": 1e-5, "atol": 1e-5}
    for mine, theirs in zip(patched[:2], reference[:2]):
        torch.testing.assert_close(mine, theirs, **close)
    for name, grad in reference[2].items():
        torch.testing.assert_close(patched[2][name], grad, **close, msg=lambda m, n=name: f"{n}: {m}")


def kernel_pairs(args, kwargs) -> int:
    """Query/key pairs one npu_fusion_attention call computes, read from its arguments (op documentation):
    TND sparse_mode 3 a causal triangle per document of actual_seq_qlen (cumulative ends); BNSD with a full
    atten_mask (sparse_mode 0) every pair, with the compressed causal mask (sparse_mode 3) each row's triangle."""
    if args[4] == "TND":
        ends = [0, *kwargs["actual_seq_qlen"]]
        return sum((b - a) * (b - a + 1) // 2 for a, b in zip(ends[:-1], ends[1:]))
    batch, _, length, _ = args[0].shape
    if kwargs.get("sparse_mode", 0) == 3:
        return batch * length * (length + 1) // 2
    return batch * length * length


@pytest.mark.parametrize("side", ["right", "left", "packed"])
def test_the_bench_counts_the_attention_pairs_the_npu_kernel_computes(fake_torch_npu, monkeypatch, gqa_model, side):
    from llama_hw.bench.tokens import TokenCounts, count_batch
    from llama_hw.bench.work import NPU_TND, work_layout

    monkeypatch.setenv("FAKE_NPU_NAME", "Ascend910B3")
    torch_npu = fake_torch_npu()
    pairs = []
    original = torch_npu.npu_fusion_attention

    def counting(*args, **kwargs):
        pairs.append(kernel_pairs(args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_npu, "npu_fusion_attention", counting)
    model = fresh_copy(gqa_model).train()
    if side == "packed":
        inputs, _ = packed_inputs(model.config.vocab_size, with_boundaries=False)
    else:
        ids, mask = padded_batch([ROW, 1, 19], ROW, side, model.config.vocab_size, seed=4)
        inputs = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    report = apply_patches(model, NpuBackend(), "train", selection=KEEP_LOGITS)
    try:
        layout = work_layout(report, model)
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        report.revert()
    assert layout.attention == NPU_TND
    layers = model.config.num_hidden_layers
    assert len(pairs) == layers and len(set(pairs)) == 1
    counted = TokenCounts.from_list(count_batch(**inputs, layout=layout).tolist()).attention_pairs
    expected = {"right": 32 * 33 // 2 + 1 + 19 * 20 // 2, "left": 3 * ROW * ROW, "packed": 55 + 231 + 1 + 528}[side]
    assert counted == pairs[0] == expected
