"""Fixtures shared by the whole suite: the `../shared` data and the fake torch_npu."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from llama_hw.utils.shared import SHARED_ENV, shared_root

REPO = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fakes"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if root is None:
        pytest.skip(f"shared test data not found: set {SHARED_ENV} or put shared/ beside the checkout")
    return root


@pytest.fixture(scope="session")
def llama2_tokenizer_dir(shared_dir) -> Path:
    return shared_dir / "data" / "tokenizers" / "llama2"


@pytest.fixture(scope="session")
def stories260k_dir(shared_dir) -> Path:
    return shared_dir / "data" / "models" / "stories260K"


@pytest.fixture(scope="session")
def dummy_conversations(shared_dir) -> Path:
    return shared_dir / "data" / "conversations" / "fastchat_dummy_conversation.json"


class _NoNpu:
    """What `torch.npu` answers once the fake is gone: torch keeps the PrivateUse1 device renamed to
    "npu" for the rest of the process, and torch.optim asks that device's module whether it exists."""

    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def device_count() -> int:
        return 0


def _forget_torch_npu() -> None:
    for name in [m for m in sys.modules if m == "torch_npu" or m.startswith("torch_npu.")]:
        del sys.modules[name]
    if hasattr(torch, "npu"):
        delattr(torch, "npu")
    if torch._C._get_privateuse1_backend_name() == "npu":
        torch.npu = _NoNpu


@pytest.fixture
def fake_torch_npu(monkeypatch):
    """Make `import torch_npu` find the test double; configure it with FAKE_* variables (see its docstring).

    Returns a function that imports it after the caller set the variables.
    """
    _forget_torch_npu()
    monkeypatch.syspath_prepend(str(FAKES))
    yield lambda: __import__("torch_npu")
    _forget_torch_npu()


@pytest.fixture
def no_torch_npu(monkeypatch):
    """Guarantee torch_npu is not importable, as on a machine without the Ascend stack."""
    _forget_torch_npu()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p).resolve() != FAKES])
    yield
    _forget_torch_npu()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for CLI subprocess tests: this interpreter's, single-threaded, plus `extra`."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env
