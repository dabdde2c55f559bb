"""The result of `apply_patches`: one line per patch, applied or skipped and why, and the way back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

APPLIED = "applied"
SKIPPED = "skipped"


@dataclass(frozen=True)
class PatchOutcome:
    name: str
    scope: str  # "process" or "model"
    status: str  # "applied" or "skipped"
    replaces: str
    reason: str = ""  # skipped: why not; applied: a note ("already applied", "irreversible: ...")


@dataclass
class PatchReport:
    """What `apply_patches` did. `revert()` restores the original behaviour of everything it applied."""

    backend: str
    mode: str
    model_type: str | None
    selection: str  # the LLAMA_HW_PATCHES value or `selection` argument in effect
    selection_source: str  # "LLAMA_HW_PATCHES" or "selection" (the argument)
    outcomes: list[PatchOutcome]
    _revert: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def applied(self) -> list[str]:
        return [o.name for o in self.outcomes if o.status == APPLIED]

    @property
    def skipped(self) -> list[str]:
        return [o.name for o in self.outcomes if o.status == SKIPPED]

    def revert(self) -> None:
        """Undo this report's patches (a second call, or one after another report reverted them, is a no-op)."""
        if self._revert is not None:
            self._revert()

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "mode": self.mode,
            "model_type": self.model_type,
            "selection": self.selection,
            "selection_source": self.selection_source,
            "patches": [asdict(outcome) for outcome in self.outcomes],
        }

    def render(self) -> str:
        target = self.model_type or "no model"
        lines = [f"patches ({self.backend}, {target}, {self.mode}; {self.selection_source}={self.selection}):"]
        if not self.outcomes:
            lines.append("  (none for this backend)")
        width = max((len(o.name) for o in self.outcomes), default=0)
        for outcome in self.outcomes:
            if outcome.status == APPLIED:
                detail = outcome.replaces + (f" ({outcome.reason})" if outcome.reason else "")
            else:
                detail = outcome.reason
            lines.append(f"  {outcome.status:<7}  {outcome.name:<{width}}  {detail}")
        return "\n".join(lines)
