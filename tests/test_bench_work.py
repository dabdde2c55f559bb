"""Which work a run executes, decided from the applied patches: attention layout and the head's rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llama_hw.bench.work import CPU_VARLEN, DENSE, NPU_TND, PER_SEQUENCE, SDPA, work_layout
from llama_hw.patches.report import PatchOutcome, PatchReport


def report(*applied: str, replaces: str = "", backend: str = "cpu") -> PatchReport:
    outcomes = [PatchOutcome(name, "model", "applied", replaces) for name in applied]
    return PatchReport(backend, "train", "llama", "all", "selection", outcomes)


def model(implementation: str):
    return SimpleNamespace(config=SimpleNamespace(_attn_implementation=implementation))


@pytest.mark.parametrize("applied, implementation, attention, head", [
    (("sdpa_attention", "varlen_attention", "chunked_cross_entropy"), "sdpa_varlen", CPU_VARLEN, True),
    (("sdpa_attention",), "sdpa", SDPA, False),
    (("flash_attention_2",), "flash_attention_2", PER_SEQUENCE, False),
    (("flex_attention", "chunked_cross_entropy"), "flex_attention", PER_SEQUENCE, True),
    (("npu_fused_softmax",), "npu_fused_softmax", DENSE, False),
    ((), "eager", DENSE, False),  # --patches none on a model loaded with eager attention
    ((), "sdpa", SDPA, False),
    ((), "some_future_kernel", PER_SEQUENCE, False),  # unknown: the least work any correct kernel does
])  # fmt: skip
def test_layout_follows_the_applied_patches(applied, implementation, attention, head):
    layout = work_layout(report(*applied), model(implementation), pair_dims=256)
    assert (layout.attention, layout.head_labelled_only, layout.pair_dims) == (attention, head, 256)


def test_varlen_attention_off_cpu_never_splits_padded_batches():
    layout = work_layout(report("sdpa_attention", "varlen_attention", backend="cuda"), model("sdpa_varlen"), 4096)
    assert layout.attention == CPU_VARLEN and layout.pair_dims == 0  # count_batch: padded -> dense, packed -> varlen


def test_npu_fusion_attention_counts_per_document_only_with_its_tnd_path():
    bnsd = work_layout(report("npu_fusion_attention", replaces="attention implementation -> npu_fusion_attention"))
    assert bnsd.attention == SDPA and "BNSD" in bnsd.why
    tnd = work_layout(report("npu_fusion_attention", replaces="npu_fusion_attention (TND varlen for packed rows)"))
    assert tnd.attention == NPU_TND  # count_batch: per document for packed and right-padded rows, else BNSD


def test_liger_saves_memory_not_work():
    layout = work_layout(report("liger_kernel"), model("sdpa"))  # every row still goes through the head
    assert not layout.head_labelled_only
