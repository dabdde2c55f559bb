"""Which work a training step actually executes: the attention layout and the head's rows, from the patches.

MFU is FLOPs executed / (time x peak), so it must count what the kernels compute, not what the model
could compute: a run whose patches skip the head on unlabelled positions and the attention on padding
does less work per token, and counting the skipped work as done once reported MFU 1.40 on a CPU.

Attention (12 x layers x heads x head size FLOPs per query/key pair, forward and backward) by layout:
- `dense`: every pair of every row, padding included (eager attention; a dense 4-D mask);
- `sdpa`: PyTorch sdpa as transformers calls it: a batch without padding or packing runs `is_causal`
  (the kernels skip the blocks above the diagonal: n(n+1)/2 pairs per row), any other batch a dense mask;
- `per-sequence`: each sequence's own causal triangle, n(n+1)/2 pairs: padded rows' text, packed rows'
  documents (the packed collator's padding segment is a sequence too: the kernels compute it). flash-attn's
  varlen path, FlexAttention's document mask;
- `npu-tnd`: llama_hw's `npu_fusion_attention` patch with its TND path: packed rows and right-padded
  rows per sequence (as `per-sequence`); left-padded rows run BNSD with the full mask: every pair;
- `cpu-varlen`: llama_hw's `varlen_attention` patch: packed rows per document; a padded batch is split per
  row only on CPU and only when splitting pays (`llama_hw.patches.varlen_attention.splitting_pays`), else
  (and always on CUDA) it runs as one dense masked call.
Flash kernels compute the diagonal blocks whole; counting the exact triangle makes the figure a lower
bound, so executed-work MFU never overstates. An attention implementation this table does not know
counts as `per-sequence`, the least any correct kernel computes.

Head (the output projection, 6 x vocab x hidden FLOPs per row when it trains): every row the model
computes, except with the `chunked_cross_entropy` patch, which runs it only at labelled positions.
Liger's fused linear cross-entropy (`--use_liger_kernel`) saves memory, not work: it multiplies every
row, chunk by chunk, so it counts all rows.
"""

from __future__ import annotations

from dataclasses import dataclass

DENSE, SDPA, PER_SEQUENCE, CPU_VARLEN, NPU_TND = "dense", "sdpa", "per-sequence", "cpu-varlen", "npu-tnd"
LAYOUTS = (DENSE, SDPA, PER_SEQUENCE, CPU_VARLEN, NPU_TND)

# patch name -> layout, first match in applied order wins over the model's attention implementation
PATCH_LAYOUTS = {
    "varlen_attention": CPU_VARLEN,
    "flash_attention_2": PER_SEQUENCE,
    "flex_attention": PER_SEQUENCE,
    "npu_fused_softmax": DENSE,
    "sdpa_attention": SDPA,
}
# transformers attention implementation (model.config._attn_implementation) -> layout
IMPLEMENTATION_LAYOUTS = {
    "eager": DENSE,
    "sdpa": SDPA,
    "sdpa_varlen": CPU_VARLEN,
    "flash_attention_2": PER_SEQUENCE,
    "flash_attention_3": PER_SEQUENCE,
    "flex_attention": PER_SEQUENCE,
    "npu_fused_softmax": DENSE,
}
NPU_FUSION = "npu_fusion_attention"
HEAD_SKIPPING_PATCHES = ("chunked_cross_entropy",)


@dataclass(frozen=True)
class WorkLayout:
    """What the counter needs to count executed work: the attention layout and whether the head skips rows."""

    attention: str = PER_SEQUENCE
    head_labelled_only: bool = False
    pair_dims: int = 0  # heads x head size, for the cpu-varlen split rule (0: padded batches never split)
    why: str = ""

    def describe(self) -> str:
        head = "labelled rows" if self.head_labelled_only else "all rows"
        return f"attention {self.attention}, head on {head}" + (f" ({self.why})" if self.why else "")


def npu_fusion_layout(outcome) -> tuple[str, str]:
    """npu_fusion_attention runs packed and right-padded batches per sequence only with its TND path;
    the BNSD path with a dense mask computes every pair. The patch says which in its report line."""
    text = f"{getattr(outcome, 'replaces', '')} {getattr(outcome, 'reason', '')}"
    if "TND" in text:
        return NPU_TND, "npu_fusion_attention: TND per document for packed and right-padded rows, BNSD otherwise"
    return SDPA, "npu_fusion_attention BNSD: dense mask for padded and packed batches, causal otherwise"


def work_layout(patch_report, model=None, pair_dims: int = 0) -> WorkLayout:
    """The layout of a patched model: decided by the applied attention patch, else the model's own
    implementation; the head by whether chunked_cross_entropy applied."""
    applied = list(getattr(patch_report, "applied", []) or [])
    outcomes = {o.name: o for o in getattr(patch_report, "outcomes", []) or []}
    head = any(name in applied for name in HEAD_SKIPPING_PATCHES)
    layout, why = None, ""
    for name in sorted(applied, key=lambda n: (n != "varlen_attention", n)):  # varlen builds on sdpa: it wins
        if name == NPU_FUSION:
            layout, why = npu_fusion_layout(outcomes.get(name))
            break
        if name in PATCH_LAYOUTS:
            layout, why = PATCH_LAYOUTS[name], f"patch {name}"
            break
    if layout == CPU_VARLEN and getattr(patch_report, "backend", "cpu") != "cpu":
        pair_dims, why = 0, why + "; padded batches split only on CPU"
    if layout is None:
        implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if implementation in IMPLEMENTATION_LAYOUTS:
            layout, why = IMPLEMENTATION_LAYOUTS[implementation], f"attention implementation {implementation}"
        else:
            layout, why = PER_SEQUENCE, f"unknown attention implementation {implementation!r}: the least work"
    return WorkLayout(layout, head, pair_dims, why)
