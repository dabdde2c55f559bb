"""Where the shared public test and benchmark data lives (`../shared` beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

from llama_hw.errors import UsageError

SHARED_ENV = "LLAMA_HW_SHARED"


def shared_root() -> Path | None:
    """LLAMA_HW_SHARED if set, else `shared/` beside the checkout or the working directory; None if absent."""
    if os.environ.get(SHARED_ENV):
        root = Path(os.environ[SHARED_ENV])
        return root if root.is_dir() else None
    checkout = Path(__file__).resolve().parents[2]
    for candidate in (checkout.parent / "shared", Path.cwd().parent / "shared"):
        if (candidate / "data").is_dir():
            return candidate
    return None


def shared_path(*parts: str) -> Path:
    root = shared_root()
    path = root.joinpath(*parts) if root else None
    if path is None or not path.exists():
        raise UsageError(
            f"shared data {'/'.join(parts)} not found: set {SHARED_ENV} to the folder that holds data/ "
            "(the `shared/` beside the llama_hw checkout)"
        )
    return path
