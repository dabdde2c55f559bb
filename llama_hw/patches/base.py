"""What a patch is: its declaration (`Patch`), what its check sees (`PatchContext`), and `Changes`, the
journal through which it modifies objects so that revert puts back exactly what was there.

Nothing here writes a file: patches change attributes, mapping entries and environment variables of the
running process, and each change is recorded with the value it replaced.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from llama_hw.backends import Backend
from llama_hw.backends.npu import import_torch_npu
from llama_hw.utils.imports import package_version

MODES = ("train", "infer")
SCOPES = ("process", "model")

Check = Callable[["PatchContext"], "str | None"]


def always(ctx: PatchContext) -> str | None:
    return None


def undo_changes(state: Changes) -> None:
    state.undo()


@dataclass(frozen=True)
class Patch:
    """One runtime patch. Register it by listing it in a `PATCHES` list of a module in llama_hw/patches/.

    `apply(ctx)` makes the change and returns the state `revert(state)` needs; the default `revert` undoes
    a `Changes` journal, so most patches only write `apply`. `check(ctx)` returns None when the patch
    applies, else the reason it does not (shown in the report).
    """

    name: str
    summary: str  # what it does and why, one line
    replaces: str  # the object or setting it swaps out
    scope: str  # "process": needs no model; "model": changes one model (and may need shared state)
    apply: Callable[[PatchContext], Any]
    revert: Callable[[Any], None] = undo_changes
    check: Check = always
    backends: tuple[str, ...] | None = None  # backend names it serves; None = every backend
    model_types: tuple[str, ...] | None = None  # config.model_type values it serves; None = any
    modes: tuple[str, ...] = MODES
    requires: tuple[str, ...] = ()  # requirement specifiers on installed distributions: "deepspeed>=0.10.1"
    reversible: bool = True  # False when revert cannot undo it (an imported plugin); the report says so
    order: int = 100  # lower applies first; process patches 10-30, attention 40-50, kernels 60-80

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"patch {self.name}: scope must be one of {SCOPES}, got {self.scope!r}")


@dataclass
class PatchContext:
    """What a patch's check and apply see: the backend, the mode and (model-scope) the model."""

    backend: Backend
    mode: str
    model: Any | None = None  # the transformers PreTrainedModel (a peft wrapper is unwrapped)
    model_type: str | None = None
    applied: set[str] = field(default_factory=set)  # names applied so far in this run, in order
    # transformers.TrainingArguments of the run, when the caller has them: patches that Trainer options
    # replace (--use_liger_kernel) read them to step aside
    training_args: Any | None = None

    @property
    def config(self) -> Any | None:
        return None if self.model is None else self.model.config

    @property
    def is_npu(self) -> bool:
        return self.backend.name == "npu"

    def torch_npu(self):
        return import_torch_npu()

    def npu_generation(self) -> str:
        """"910A" (fp16 cubes, no fused attention) or "910B" (Atlas A2 / A3)."""
        return self.backend.chip_generation()

    def head_dim(self) -> int | None:
        config = self.config
        if config is None:
            return None
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def unmet_requirement(requirement: str) -> str | None:
    """Why `requirement` ("deepspeed<0.10.1") is not met by the installed distributions, or None."""
    from packaging.requirements import Requirement

    parsed = Requirement(requirement)
    version = package_version(parsed.name)
    if version is None:
        return f"{parsed.name} is not installed"
    if not parsed.specifier.contains(version, prereleases=True):
        return f"needs {parsed.name}{parsed.specifier}, found {version}"
    return None


# -- the change journal ----------------------------------------------------------------------------

_MISSING = object()
# Shared slots: one object attribute or mapping key changed by several model-scope applications (two
# models patched in one process share transformers' registries). The first application stores the
# original, the last revert restores it.
_SHARED: dict[tuple[int, str], list] = {}


def _read(container: Any, key: str) -> Any:
    if isinstance(container, MutableMapping):
        return container.get(key, _MISSING)
    return vars(container).get(key, _MISSING)  # the object's own attribute, not an inherited one


def _write(container: Any, key: str, value: Any) -> None:
    if isinstance(container, MutableMapping):
        if value is _MISSING:
            container.pop(key, None)
        else:
            container[key] = value
    elif value is _MISSING:
        delattr(container, key)
    else:
        setattr(container, key, value)


class Changes:
    """A journal of changes; `undo()` reverts them in reverse order, restoring the exact old values."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.note = ""  # shown after "applied" in the report: how the patch applied, when that varies

    def record_changes(self, container: Any, before: dict[str, Any]) -> None:
        """Journal what third-party code changed in `container` since `before = dict(vars(container))`.

        For libraries that patch objects themselves (Liger): their changes become revertible like ours.
        """
        after = vars(container)
        for key in set(before) | set(after):
            old, new = before.get(key, _MISSING), after.get(key, _MISSING)
            if old is not new:
                self._undo.append(lambda key=key, old=old: _write(container, key, old))

    def set(self, container: Any, key: str, value: Any) -> None:
        """Set an attribute of an object (or a key of a mapping) and remember what was there."""
        old = _read(container, key)
        _write(container, key, value)
        self._undo.append(lambda: _write(container, key, old))

    def set_shared(self, container: Any, key: str, value: Any) -> None:
        """Like `set`, for process-wide state several applications share: the last undo restores it."""
        slot_key = (id(container), key)
        slot = _SHARED.get(slot_key)
        if slot is None:
            slot = _SHARED[slot_key] = [_read(container, key), 0, container]
            _write(container, key, value)
        slot[1] += 1

        def release() -> None:
            slot[1] -= 1
            if slot[1] == 0:
                _write(container, key, slot[0])
                del _SHARED[slot_key]

        self._undo.append(release)

    def setenv(self, name: str, value: str) -> None:
        self.set(os.environ, name, value)

    def on_undo(self, action: Callable[[], None]) -> None:
        """Run `action` when the journal is undone (for state that `set` cannot express)."""
        self._undo.append(action)

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()
