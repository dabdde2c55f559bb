"""`--use_liger_kernel` (TrainingArguments) through the patch registry, so that the report shows Liger's kernels.

transformers' Trainer applies Liger (https://github.com/linkedin/Liger-Kernel, Triton kernels for CUDA) to
the model in its constructor when `use_liger_kernel` is set: RoPE, RMSNorm, SwiGLU and the fused linear
cross-entropy, which replaces `LlamaForCausalLM.forward` as `chunked_cross_entropy` does. This patch makes
the same call first (`liger_kernel.transformers._apply_liger_kernel_to_instance`, with the run's
`liger_kernel_config`), records what Liger changed so that revert restores it, and names the changes in
the report; `chunked_cross_entropy` then steps aside. Trainer's own call repeats Liger's assignments, which
changes nothing. Liger swaps attributes, module forwards and transformers' module-level names; whatever it
changes on classes themselves is outside this journal.
"""

from __future__ import annotations

import importlib

from llama_hw.patches.base import Changes, Patch, PatchContext
from llama_hw.utils.imports import is_package_importable


def wanted(ctx: PatchContext) -> bool:
    return bool(ctx.training_args is not None and getattr(ctx.training_args, "use_liger_kernel", False))


def check(ctx: PatchContext) -> str | None:
    if not wanted(ctx):
        return "--use_liger_kernel is not set"
    if not is_package_importable("liger_kernel"):
        return "liger_kernel is not installed (pip install liger-kernel); Trainer will refuse --use_liger_kernel"
    return None


def apply(ctx: PatchContext) -> Changes:
    liger = importlib.import_module("liger_kernel.transformers")
    model = ctx.model
    modeling = importlib.import_module(type(model).__module__)  # transformers.models.llama.modeling_llama
    modules = dict(model.named_modules())
    before = {name: dict(vars(module)) for name, module in modules.items()}
    module_names = dict(vars(modeling))
    config = dict(getattr(ctx.training_args, "liger_kernel_config", None) or {})
    changes = Changes()
    try:
        liger._apply_liger_kernel_to_instance(model=model, **config)
    finally:  # record even a half-done application, so that revert (or the registry's rollback) undoes it
        changes.record_changes(modeling, module_names)
        for name, module in modules.items():
            changes.record_changes(module, before[name])
    swapped = sorted(key for key in set(module_names) | set(vars(modeling))
                     if module_names.get(key) is not vars(modeling).get(key))  # fmt: skip
    forwards = sum(vars(module).get("forward") is not before[name].get("forward") for name, module in modules.items())
    parts = [f"{modeling.__name__.rsplit('.', 1)[-1]}: {', '.join(swapped)}"] if swapped else []
    parts.append(f"the forward of {forwards} module(s)" + (" incl. the model's (fused linear cross-entropy)"
                                                           if "forward" in vars(model) else ""))  # fmt: skip
    changes.note = "Liger: " + "; ".join(parts)
    return changes


PATCHES = [
    Patch(
        name="liger_kernel",
        summary="Liger's Triton kernels as --use_liger_kernel asks, applied and reported here (Trainer repeats it)",
        replaces="RoPE / RMSNorm / SwiGLU / LlamaForCausalLM.forward of this model -> Liger's kernels",
        scope="model", backends=("cuda",), modes=("train",),
        check=check, apply=apply, order=65,
    ),
]  # fmt: skip
