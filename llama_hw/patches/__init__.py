"""Runtime patches: device kernels and library fixes applied to the running process, never to files.

    from llama_hw.patches import apply_patches, describe_patches
    report = apply_patches(model, backend, mode="train")  # model may be None: process-level patches only
    print(report.render())                                 # one line per patch: applied / skipped + why
    report.revert()                                        # original behaviour, exactly
    apply_patches(model, backend, training_args=args)      # with the TrainingArguments: Trainer options that
                                                           # replace a patch (--use_liger_kernel) are honoured

Applying twice equals applying once; `LLAMA_HW_PATCHES=all|none|name,name|all,-name` (or the
`selection=` argument) chooses the patches; an unknown name is a UsageError listing the valid ones.

Adding patches: create a module in this package that defines `PATCHES`, a list of `Patch` (discovered
automatically, like the backends). A patch declares

    Patch(
        name="my_fix",                      # what LLAMA_HW_PATCHES names
        summary="one line: what and why",
        replaces="the object or setting it swaps out",
        scope="process",                    # or "model": needs the model, runs once per model
        backends=None,                      # or ("npu",): backend names it serves; None = all
        model_types=None,                   # model scope: config.model_type values, e.g. ("llama",)
        modes=("train", "infer"),
        requires=("fschat>=0.2.36",),       # requirement specifiers on installed distributions
        check=lambda ctx: None,             # None = applies; else the reason it does not
        apply=my_apply,                     # (PatchContext) -> state for revert
        revert=undo_changes,                # (state) -> None; the default undoes a `Changes` journal
        order=100,                          # lower first: process 10-30, attention 40-50, kernels 60-80
    )

and usually writes only `apply`, through a `Changes` journal whose default revert restores every value:

    def my_apply(ctx: PatchContext) -> Changes:
        changes = Changes()
        changes.set(some_module, "some_function", replacement)  # object attribute or mapping key
        changes.setenv("SOME_VARIABLE", "value")
        return changes

`Changes.set_shared` is for process-wide state that several models' patches share (transformers'
registries): the first application stores the original, the last revert restores it.
"""

from __future__ import annotations

from llama_hw.patches.base import Changes, Patch, PatchContext, undo_changes
from llama_hw.patches.registry import (
    PATCHES_ENV,
    apply_patches,
    describe_patches,
    registered_patches,
    resolve_selection,
)
from llama_hw.patches.report import PatchOutcome, PatchReport

__all__ = [
    "PATCHES_ENV",
    "Changes",
    "Patch",
    "PatchContext",
    "PatchOutcome",
    "PatchReport",
    "apply_patches",
    "describe_patches",
    "registered_patches",
    "resolve_selection",
    "undo_changes",
]
