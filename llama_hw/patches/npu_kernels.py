"""Ascend fused kernels for the rest of a LLaMA layer: RMSNorm, rotary embedding, SwiGLU MLP.

RMSNorm and MLP are swapped per module instance (the `forward` of each LlamaRMSNorm / LlamaMLP of this
model; the class and other models are untouched). Rotary embedding is applied inside LlamaAttention by
the module-level function `modeling_llama.apply_rotary_pos_emb`, so that function is replaced in the
module (shared by every Llama model of the process; the last revert restores it). Each replacement checks
its inputs per call and runs the original code where the kernel's documented limits are not met.
"""

from __future__ import annotations

import functools
import types

import torch

from llama_hw.patches.base import Changes, Patch, PatchContext

A2_ONLY = "runs on Atlas A2/A3 (Ascend910B, 910_93) only; this is {device}"


def needs_a2_and(op: str):
    """A check: Atlas A2/A3 and a torch_npu that has `op`."""

    def check(ctx: PatchContext) -> str | None:
        if ctx.npu_generation() != "910B":
            return f"{op} " + A2_ONLY.format(device=ctx.backend.device_name())
        if not hasattr(ctx.torch_npu(), op):
            return f"this torch_npu has no {op}"
        return None

    return check


def swap_forward(changes: Changes, model, module_class: type, forward) -> None:
    for module in model.modules():
        if isinstance(module, module_class):
            changes.set(module, "forward", types.MethodType(forward, module))


# -- RMSNorm -------------------------------------------------------------------------------------


def rms_norm_forward(torch_npu):
    def forward(self, hidden_states):
        if hidden_states.dtype != self.weight.dtype:
            # The kernel wants gamma in x's dtype; keep transformers' type promotion (mixed precision).
            return type(self).forward(self, hidden_states)
        return torch_npu.npu_rms_norm(hidden_states, self.weight, epsilon=self.variance_epsilon)[0]

    return forward


def apply_rms_norm(ctx: PatchContext) -> Changes:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    changes = Changes()
    swap_forward(changes, ctx.model, LlamaRMSNorm, rms_norm_forward(ctx.torch_npu()))
    return changes


# -- SwiGLU MLP ----------------------------------------------------------------------------------


def swiglu_forward(torch_npu):
    def forward(self, x):
        # silu(gate) * up as one kernel over [gate, up]; the projections stay separate modules (LoRA wraps them).
        gate_up = torch_npu.npu_swiglu(torch.cat((self.gate_proj(x), self.up_proj(x)), dim=-1), dim=-1)
        return self.down_proj(gate_up)

    return forward


def check_swiglu(ctx: PatchContext) -> str | None:
    reason = needs_a2_and("npu_swiglu")(ctx)
    if reason is None and ctx.config is not None and ctx.config.hidden_act != "silu":
        return f"the MLP activation is {ctx.config.hidden_act}, not silu"
    return reason


def apply_swiglu(ctx: PatchContext) -> Changes:
    from transformers.models.llama.modeling_llama import LlamaMLP

    changes = Changes()
    swap_forward(changes, ctx.model, LlamaMLP, swiglu_forward(ctx.torch_npu()))
    return changes


# -- rotary embedding ----------------------------------------------------------------------------

ROTARY_HEAD_DIM_MULTIPLE = 64  # "the last dim D must be a multiple of 64" (RotaryMul, CANN 7.0)
ROTARY_MAX_HEAD_DIM = 896


def fits_rotary_mul(x, unsqueeze_dim: int) -> bool:
    """Documented limits: 4-D, B and N at most 1000, and for BNSD (unsqueeze_dim 1) B*N <= 8*S."""
    if x.dim() != 4 or x.shape[-1] % ROTARY_HEAD_DIM_MULTIPLE or x.shape[-1] >= ROTARY_MAX_HEAD_DIM:
        return False
    if unsqueeze_dim == 1:  # BNSD
        batch, heads, seq = x.shape[0], x.shape[1], x.shape[2]
    else:  # BSND
        batch, seq, heads = x.shape[0], x.shape[1], x.shape[2]
    return batch <= 1000 and heads <= 1000 and (unsqueeze_dim != 1 or batch * heads <= 8 * seq)


def rotary_function(torch_npu, original):
    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        # Under autocast q and k (bf16/fp16) differ from cos and sin (the residual stream's dtype); the
        # kernel wants one dtype, the original promotes.
        same_dtype = q.dtype == k.dtype == cos.dtype == sin.dtype
        if not (same_dtype and fits_rotary_mul(q, unsqueeze_dim) and fits_rotary_mul(k, unsqueeze_dim)):
            return original(q, k, cos, sin, unsqueeze_dim)
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return torch_npu.npu_rotary_mul(q, cos, sin), torch_npu.npu_rotary_mul(k, cos, sin)

    return apply_rotary_pos_emb


def check_rotary(ctx: PatchContext) -> str | None:
    if not hasattr(ctx.torch_npu(), "npu_rotary_mul"):
        return "this torch_npu has no npu_rotary_mul"
    head_dim = ctx.head_dim()
    if head_dim is not None and (head_dim % ROTARY_HEAD_DIM_MULTIPLE or head_dim >= ROTARY_MAX_HEAD_DIM):
        return f"head size {head_dim} is not a multiple of {ROTARY_HEAD_DIM_MULTIPLE} below {ROTARY_MAX_HEAD_DIM}"
    return None


def apply_rotary(ctx: PatchContext) -> Changes:
    from transformers.models.llama import modeling_llama

    changes = Changes()
    replacement = rotary_function(ctx.torch_npu(), modeling_llama.apply_rotary_pos_emb)
    changes.set_shared(modeling_llama, "apply_rotary_pos_emb", replacement)
    return changes


PATCHES = [
    Patch(
        name="npu_rms_norm",
        summary="LlamaRMSNorm as torch_npu.npu_rms_norm (original code when x and weight dtypes differ)",
        replaces="LlamaRMSNorm.forward of this model -> npu_rms_norm",
        scope="model", backends=("npu",), model_types=("llama",),
        check=needs_a2_and("npu_rms_norm"), apply=apply_rms_norm, order=60,
    ),
    Patch(
        name="npu_rotary_mul",
        summary="rotary embedding of q and k as torch_npu.npu_rotary_mul where its shape limits allow",
        replaces="modeling_llama.apply_rotary_pos_emb -> npu_rotary_mul",
        scope="model", backends=("npu",), model_types=("llama",),
        check=check_rotary, apply=apply_rotary, order=70,
    ),
    Patch(
        name="npu_swiglu",
        summary="LlamaMLP's silu(gate) * up as torch_npu.npu_swiglu",
        replaces="LlamaMLP.forward of this model -> npu_swiglu",
        scope="model", backends=("npu",), model_types=("llama",),
        check=check_swiglu, apply=apply_swiglu, order=80,
    ),
]  # fmt: skip
