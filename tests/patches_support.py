"""Shared pieces of the patch tests: tiny Llama models, padded batches, a spy on the fake torch_npu ops,
and the comparison of a patched model with its unpatched eager self."""

from __future__ import annotations

import collections
import copy
from dataclasses import dataclass

import pytest
import torch

from llama_hw.backends.npu import NpuBackend

NPU_OPS = ("npu_fusion_attention", "npu_scaled_masked_softmax", "npu_rms_norm", "npu_rotary_mul", "npu_swiglu")
CHIPS = {"910B": "Ascend910B3", "910A": "Ascend910A"}
# Every patch but the chunked head, whose training output has no logits: these tests compare logits.
KEEP_LOGITS = "all,-chunked_cross_entropy"


def random_gqa_llama():
    """2 layers, 4 query heads over 2 key-value heads of size 64 (npu_rotary_mul's multiple), vocab 128."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, attn_implementation="eager",
    )  # fmt: skip
    return LlamaForCausalLM(config).float()


def stories260k(model_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)


def padded_batch(lengths: list[int], total: int, side: str, vocab: int, seed: int = 0):
    """Random ids and the 2-D attention mask for rows of `lengths` padded to `total` on `side`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), total), generator=generator)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, length in enumerate(lengths):
        if side == "right":
            mask[row, :length] = 1
        else:
            mask[row, total - length :] = 1
    return ids.masked_fill(mask == 0, 0), mask


# The four padding cases of the issue; `total` is a multiple of 32 so that fused softmax hits its kernel.
PADDING_CASES = {
    "no_padding": ([64, 64, 64], "right"),
    "right_padding": ([64, 64, 57], "right"),
    "left_padding": ([64, 57, 64], "left"),
    "different_lengths": ([64, 45, 23], "right"),
}


@dataclass
class Result:
    logits: torch.Tensor  # only where attention_mask is 1: padded positions carry no meaning
    loss: torch.Tensor
    grads: dict[str, torch.Tensor]


def forward_backward(model, ids, mask) -> Result:
    model.zero_grad(set_to_none=True)
    # A token is a target only when the position predicting it is a real token: in a left-padded row the
    # first real token would be predicted from padding, whose output no implementation defines.
    predicted_from_padding = torch.cat([torch.ones_like(mask[:, :1]), 1 - mask[:, :-1]], dim=1).bool()
    labels = ids.masked_fill((mask == 0) | predicted_from_padding, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return Result(out.logits.detach()[mask.bool()], out.loss.detach(), grads)


def assert_same(patched: Result, reference: Result, tolerance: float = 1e-5) -> None:
    """|patched - reference| <= 1e-5 + 1e-5 * |reference| everywhere: fp32 agreement up to the rounding of
    reordered arithmetic (stories260K's logits reach ~19, where 1e-5 absolute is 4 ulp)."""
    close = {"rtol": tolerance, "atol": tolerance}
    torch.testing.assert_close(patched.logits, reference.logits, **close)
    torch.testing.assert_close(patched.loss, reference.loss, **close)
    assert patched.grads.keys() == reference.grads.keys()
    for name, grad in reference.grads.items():
        torch.testing.assert_close(patched.grads[name], grad, **close, msg=lambda m, n=name: f"{n}: {m}")


def spy_on_ops(monkeypatch, torch_npu) -> collections.Counter:
    """Count calls of each fake fused op; for npu_fusion_attention also per sparse_mode and per layout
    ("TND sparse_mode=3"), and the last TND call's actual_seq_qlen / actual_seq_kvlen."""
    calls: collections.Counter = collections.Counter()
    for name in NPU_OPS:
        original = getattr(torch_npu, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            if _name == "npu_fusion_attention":
                layout = args[4] if len(args) > 4 else kwargs["input_layout"]
                calls[f"sparse_mode={kwargs.get('sparse_mode', 0)}"] += 1
                calls[f"{layout} sparse_mode={kwargs.get('sparse_mode', 0)}"] += 1
                if layout == "TND":
                    calls["TND actual_seq_qlen"] = list(kwargs["actual_seq_qlen"])
                    calls["TND actual_seq_kvlen"] = list(kwargs["actual_seq_kvlen"])
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch_npu, name, spy)
    return calls


def fresh_copy(model):
    return copy.deepcopy(model)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These models are tiny: one intra-op thread is faster than several contending for 2 shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No patch selection, accelerator or device from the calling shell (or an earlier test)."""
    for name in ("LLAMA_HW_PATCHES", "DS_ACCELERATOR", "LLAMA_HW_DEVICE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def npu(fake_torch_npu, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_NAME", "Ascend910B3")
    fake_torch_npu()
    return NpuBackend()
