"""Finding the patches, choosing the ones to run, applying them once, and undoing them.

Patches are discovered like backends: every module of this package that defines `PATCHES` contributes
them. `apply_patches` runs each selected patch whose backend, model type, mode, version requirements and
own check allow it, in `order`, and remembers what is active (per model for model-scope patches, per
process for the others), so applying twice equals applying once and any report can revert.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import weakref
from typing import Any

from llama_hw.backends import Backend
from llama_hw.errors import UsageError
from llama_hw.patches.base import MODES, Patch, PatchContext, unmet_requirement
from llama_hw.patches.report import APPLIED, SKIPPED, PatchOutcome, PatchReport

PATCHES_ENV = "LLAMA_HW_PATCHES"

# What is applied now: name -> revert state. Model-scope entries die with their model.
_PROCESS_ACTIVE: dict[str, Any] = {}
_MODEL_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.cache
def registered_patches() -> tuple[Patch, ...]:
    """Every patch declared in a `PATCHES` list of a module of this package, in application order."""
    package = importlib.import_module("llama_hw.patches")
    found: dict[str, Patch] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for patch in getattr(module, "PATCHES", ()):
            if patch.name in found:
                raise ValueError(f"patch name {patch.name!r} is declared twice (second in {module.__name__})")
            found[patch.name] = patch
    return tuple(sorted(found.values(), key=lambda patch: (patch.order, patch.name)))


def resolve_selection(selection: str | None) -> tuple[str, str, frozenset[str]]:
    """(where it came from, the text in effect, the selected names) for "all" | "none" | "a,b" | "all,-a"."""
    source = PATCHES_ENV if selection is None else "selection"
    text = (os.environ.get(PATCHES_ENV, "") if selection is None else selection).strip() or "all"
    valid = [patch.name for patch in registered_patches()]
    items = [item.strip() for item in text.split(",") if item.strip()]
    included = {item for item in items if not item.startswith("-")}
    excluded = {item[1:].strip() for item in items if item.startswith("-")}
    unknown = sorted((included | excluded) - set(valid) - {"all", "none"})
    if unknown or ("none" in included and len(items) > 1):
        problem = f"unknown patch {', '.join(map(repr, unknown))}" if unknown else "'none' cannot be combined"
        raise UsageError(
            f"{problem} in {source}={text!r}. Use all, none, or a comma-separated list of: {', '.join(valid)} "
            "(prefix a name with '-' to leave it out of all)."
        )
    if included == {"none"}:
        return source, text, frozenset()
    chosen = set(valid) if "all" in included or not included else included
    return source, text, frozenset(chosen - excluded)


def base_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper (the model itself when it is not wrapped)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _skip_reason(patch: Patch, ctx: PatchContext, selected: frozenset[str], turned_off: str) -> str | None:
    if patch.name not in selected:
        return turned_off
    if ctx.mode not in patch.modes:
        return f"for {' / '.join(patch.modes)} only"
    if patch.scope == "model" and patch.model_types is not None and ctx.model_type not in patch.model_types:
        return f"serves {', '.join(patch.model_types)} models, not {ctx.model_type}"
    for requirement in patch.requires:
        reason = unmet_requirement(requirement)
        if reason:
            return reason
    return patch.check(ctx)


def _serves(patch: Patch, backend: Backend, with_model: bool) -> bool:
    in_scope = with_model or patch.scope == "process"
    return in_scope and (patch.backends is None or backend.name in patch.backends)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"unknown patch mode {mode!r}; choose one of {', '.join(MODES)}")


def apply_patches(model: Any, backend: Backend, mode: str = "train", *, selection: str | None = None,
                  training_args: Any | None = None) -> PatchReport:  # fmt: skip
    """Apply the patches for `backend`, `mode` and (if given) `model`; return the report.

    model: a transformers model or a peft model wrapping one, or None for process-level patches only.
    selection: "all" | "none" | "name,name" | "all,-name"; None reads LLAMA_HW_PATCHES (default all).
    training_args: the run's transformers.TrainingArguments, so that patches a Trainer option replaces
    (`--use_liger_kernel`) step aside and the option's own kernels are reported.
    A patch that fails to apply rolls back the ones this call applied, then its error propagates.
    """
    _check_mode(mode)
    source, text, selected = resolve_selection(selection)
    turned_off = f"turned off by {source}={text}"
    target = None if model is None else base_model(model)
    model_type = None if target is None else getattr(target.config, "model_type", None)
    ctx = PatchContext(backend=backend, mode=mode, model=target, model_type=model_type, training_args=training_args)
    active_for = {"process": _PROCESS_ACTIVE}
    if target is not None:
        active_for["model"] = _MODEL_ACTIVE.setdefault(target, {})
    outcomes: list[PatchOutcome] = []
    applied: list[Patch] = []  # what this report reverts, including patches an earlier call applied
    newly_applied: list[Patch] = []  # what a failure rolls back
    try:
        for patch in registered_patches():
            if not _serves(patch, backend, target is not None):
                continue
            active = active_for[patch.scope]
            if patch.name in active:
                ctx.applied.add(patch.name)
                outcomes.append(PatchOutcome(patch.name, patch.scope, APPLIED, patch.replaces, "already applied"))
                applied.append(patch)
                continue
            reason = _skip_reason(patch, ctx, selected, turned_off)
            if reason is not None:
                outcomes.append(PatchOutcome(patch.name, patch.scope, SKIPPED, patch.replaces, reason))
                continue
            active[patch.name] = state = patch.apply(ctx)
            newly_applied.append(patch)
            ctx.applied.add(patch.name)
            note = getattr(state, "note", "") or ("" if patch.reversible else "stays for the life of the process")
            outcomes.append(PatchOutcome(patch.name, patch.scope, APPLIED, patch.replaces, note))
            applied.append(patch)
    except BaseException:
        _revert(newly_applied, active_for)
        raise
    return PatchReport(
        backend=backend.name, mode=mode, model_type=model_type, selection=text, selection_source=source,
        outcomes=outcomes,
        _revert=functools.partial(_revert, applied, active_for),
    )  # fmt: skip


def _revert(applied: list[Patch], active_for: dict[str, dict[str, Any]]) -> None:
    for patch in reversed(applied):
        active = active_for[patch.scope]
        if patch.name in active:
            patch.revert(active.pop(patch.name))


def describe_patches(backend: Backend, model_type: str | None = "llama", mode: str = "train", *,
                     selection: str | None = None, training_args: Any | None = None) -> list[dict[str, Any]]:
    """What `apply_patches` would do on `backend` for a `model_type` model, without a model (for `llama-hw env`).

    Checks that need the model itself (its dtype, head size, activation) are assumed to pass; the trainer's
    report at start is the final word.
    """
    _check_mode(mode)
    source, text, selected = resolve_selection(selection)
    turned_off = f"turned off by {source}={text}"
    ctx = PatchContext(backend=backend, mode=mode, model=None, model_type=model_type, training_args=training_args)
    described = []
    for patch in registered_patches():
        if not _serves(patch, backend, model_type is not None):
            continue
        reason = _skip_reason(patch, ctx, selected, turned_off)
        if reason is None:
            ctx.applied.add(patch.name)
        described.append({
            "name": patch.name, "scope": patch.scope, "status": "applies" if reason is None else SKIPPED,
            "replaces": patch.replaces, "summary": patch.summary, "reason": reason or "",
        })  # fmt: skip
    return described
