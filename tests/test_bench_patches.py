"""The training patches added for the benchmark targets: chunked cross-entropy (every backend) and per-sequence attention.

Each must give the stock model's loss and gradients (fp32 rounding apart) for every batch layout the
pipeline makes, and step aside where it does not apply.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch
from transformers import DynamicCache

from bench_support import tiny_llama
from llama_hw.backends.cpu import CpuBackend
from llama_hw.patches import apply_patches
from llama_hw.patches import varlen_attention
from llama_hw.patches.chunked_cross_entropy import LinearCrossEntropy, causal_lm_loss

X = -100
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def batches():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 384, (3, 40), generator=generator)
    right = torch.ones_like(ids)
    right[1, 30:] = 0
    right[2, 12:] = 0
    labels = ids.masked_fill(right == 0, X)
    labels[:, :5] = X  # a prompt without labels
    left = torch.ones_like(ids)
    left[0, :7] = 0
    # Left padding: the first real token would be predicted from padding, which no implementation defines.
    left_labels = ids.masked_fill(left == 0, X)
    left_labels[0, 7] = X
    packed_positions = torch.cat([torch.arange(15), torch.arange(20), torch.arange(5)]).repeat(3, 1)
    packed_labels = labels.clone()
    packed_labels[:, 35:] = X  # the padding segment
    return {
        "full rows": {"input_ids": ids, "labels": ids},
        "right padding": {"input_ids": ids, "attention_mask": right, "labels": labels},
        "left padding": {"input_ids": ids, "attention_mask": left, "labels": left_labels},
        "packed (position_ids)": {"input_ids": ids, "position_ids": packed_positions, "labels": packed_labels},
        "packed (cu_seq_lens)": {
            "input_ids": ids, "position_ids": packed_positions, "labels": packed_labels,
            "cu_seq_lens_q": torch.tensor([0, 15, 35, 40, 55, 75, 80, 95, 115, 120], dtype=torch.int32),
            "cu_seq_lens_k": torch.tensor([0, 15, 35, 40, 55, 75, 80, 95, 115, 120], dtype=torch.int32),
            "max_length_q": 20, "max_length_k": 20,
        },
        "mask with a hole (dense fallback)": {
            "input_ids": ids, "attention_mask": torch.ones_like(ids).index_fill(1, torch.tensor([20]), 0),
            "labels": ids.masked_fill(torch.arange(40) >= 20, X),
        },
    }  # fmt: skip


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def stock():
    return tiny_llama()


@pytest.mark.parametrize("layout", list(batches()))
def test_patched_training_equals_stock(stock, layout):
    batch = batches()[layout]
    reference, patched = copy.deepcopy(stock).train(), copy.deepcopy(stock).train()
    report = apply_patches(patched, CpuBackend(), "train")
    assert {"varlen_attention", "chunked_cross_entropy"} <= set(report.applied)
    assert patched.config._attn_implementation == "sdpa_varlen"
    expected, expected_grads = loss_and_grads(reference, batch)
    got, grads = loss_and_grads(patched, batch)
    assert got.logits is None  # no [tokens, vocab] tensor in training
    torch.testing.assert_close(got.loss, expected.loss, **CLOSE)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, **CLOSE, msg=lambda m, n=name: f"{n}: {m}")
    report.revert()
    assert patched.config._attn_implementation == "sdpa" and "forward" not in vars(patched)


def test_eval_mode_and_calls_without_labels_get_logits(stock):
    model = copy.deepcopy(stock)
    report = apply_patches(model, CpuBackend(), "train")
    ids = torch.randint(3, 384, (2, 16))
    model.eval()
    evaluated = model(input_ids=ids, labels=ids)
    assert evaluated.logits.shape == (2, 16, 384) and evaluated.loss is not None
    model.train()
    assert model(input_ids=ids).logits.shape == (2, 16, 384)
    report.revert()


def test_the_patched_model_continues_from_a_kv_cache_passed_under_this_transformers_name(stock):
    # transformers 5.24 renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40): the
    # patches must not pass the old name themselves nor drop the caller's cache, and queries that follow
    # a cache attend causally to all of it (sdpa's own is_causal would align them with the first keys).
    cache_name = "cache" if "cache" in inspect.signature(type(stock).forward).parameters else "past_key_values"
    model = copy.deepcopy(stock)
    report = apply_patches(model, CpuBackend(), "train")
    ids = torch.randint(3, 384, (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model.train()
        trained = model(input_ids=ids, labels=ids, use_cache=True)
        assert trained.loss is not None and trained.logits is None
        model.eval()
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            model(input_ids=ids[:, :10], use_cache=True, **{cache_name: cache})
            assert cache.get_seq_length() == 10  # the stock forward filled the caller's cache
            step = model(input_ids=ids[:, 10:], use_cache=True, **{cache_name: cache}).logits
            whole = model(input_ids=ids).logits
    torch.testing.assert_close(step, whole[:, 10:], **CLOSE)
    report.revert()


def test_the_training_patches_stay_out_of_inference(stock):
    model = copy.deepcopy(stock)
    report = apply_patches(model, CpuBackend(), "infer")
    assert "chunked_cross_entropy" not in report.applied and "varlen_attention" not in report.applied
    report.revert()
    report = apply_patches(model, CpuBackend(), "train", selection="all,-sdpa_attention")
    skipped = {o.name: o.reason for o in report.outcomes if o.status == "skipped"}
    assert skipped["varlen_attention"] == "needs sdpa_attention (it builds on transformers' sdpa)"
    report.revert()


def test_chunks_and_a_frozen_head_give_the_same_loss_and_gradient():
    torch.manual_seed(0)
    hidden = torch.randn(2, 37, 16, requires_grad=True)
    weight = torch.randn(50, 16) * 0.3  # frozen, as under LoRA
    labels = torch.randint(0, 50, (2, 37))
    labels[0, :9] = X
    expected = torch.nn.functional.cross_entropy((hidden @ weight.t())[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1))
    (expected_grad,) = torch.autograd.grad(expected, hidden)
    for chunk_rows in (1, 7, 256):
        loss = causal_lm_loss(hidden, weight, labels, chunk_rows=chunk_rows)
        (grad,) = torch.autograd.grad(loss, hidden)
        torch.testing.assert_close(loss, expected, **CLOSE)
        torch.testing.assert_close(grad, expected_grad, **CLOSE)


def test_num_items_in_batch_divides_the_sum_as_transformers_does():
    torch.manual_seed(0)
    hidden, weight = torch.randn(1, 9, 8), torch.randn(20, 8)
    labels = torch.randint(0, 20, (1, 9))
    summed = causal_lm_loss(hidden, weight, labels, num_items_in_batch=torch.tensor(1))
    assert summed.item() == pytest.approx(8 * causal_lm_loss(hidden, weight, labels).item(), rel=1e-6)
    assert LinearCrossEntropy.apply(hidden[0, :0], weight, labels[0, :0], 4).item() == 0.0  # nothing labelled


def spy_on_sdpa(monkeypatch) -> list[tuple]:
    """Record (batch, query length, no mask, is_causal) of every sdpa kernel call."""
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, **kwargs):
        seen.append((query.shape[0], query.shape[2], kwargs.get("attn_mask") is None, kwargs.get("is_causal")))
        return original(query, key, value, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


def test_packed_conversations_and_padding_are_never_attended_across(stock, monkeypatch):
    """The sdpa kernel sees each conversation alone (15 and 20 tokens, the 5-token padding segment too),
    and for a right-padded row only its text."""
    monkeypatch.setattr(varlen_attention, "CALL_COST", 0)  # split whenever a pair is saved
    model = copy.deepcopy(stock).train()
    report = apply_patches(model, CpuBackend(), "train")
    seen = spy_on_sdpa(monkeypatch)
    model(**batches()["packed (cu_seq_lens)"])
    layers = model.config.num_hidden_layers
    assert seen == [(1, length, True, True) for length in (15, 20, 5) * 3] * layers
    seen.clear()
    model(**batches()["right padding"])
    assert seen == [(1, length, True, True) for length in (40, 30, 12)] * layers
    report.revert()


def test_short_padded_rows_run_one_dense_call_and_unpadded_rows_one_causal_call(stock, monkeypatch):
    """Per-sequence calls cost more than they save for a few short rows (the demo's batches): one masked call
    per layer instead, with the same loss; a padding mask without padding needs no mask at all."""
    model = copy.deepcopy(stock).train()
    report = apply_patches(model, CpuBackend(), "train")
    seen = spy_on_sdpa(monkeypatch)
    layers = model.config.num_hidden_layers
    padded = batches()["right padding"]
    default_cost = varlen_attention.CALL_COST

    def loss_with(call_cost):
        monkeypatch.setattr(varlen_attention, "CALL_COST", call_cost)
        seen.clear()
        return model(**padded).loss

    dense = loss_with(default_cost)
    assert seen == [(3, 40, False, False)] * layers  # one call on the dense mask
    split = loss_with(0)
    assert seen == [(1, length, True, True) for length in (40, 30, 12)] * layers
    torch.testing.assert_close(dense, split, **CLOSE)
    seen.clear()
    model(input_ids=padded["input_ids"], attention_mask=torch.ones_like(padded["input_ids"]), labels=padded["labels"])
    assert seen == [(3, 40, True, True)] * layers
    report.revert()
