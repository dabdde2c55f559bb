"""Fixtures shared by the whole suite: the `../shared` data, the fake torch_npu and the real accelerator."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from llama_hw.utils.shared import SHARED_ENV, shared_root

REPO = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fakes"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "device: needs a real CUDA GPU or Ascend NPU (the device check kit, benchmarks/device_check.sh); "
        "skipped with the reason elsewhere",
    )


def real_accelerator() -> tuple[str | None, str]:
    """(backend name, "") for the first real CUDA / Ascend device here, else (None, why there is none).

    The fake torch_npu of these tests never counts: a torch_npu found under tests/fakes is skipped.
    """
    from llama_hw.backends import get_backend

    reasons = []
    for name in ("npu", "cuda"):
        if name == "npu":
            spec = importlib.util.find_spec("torch_npu")
            if spec is None or (spec.origin and Path(spec.origin).resolve().is_relative_to(FAKES)):
                reasons.append("npu: torch_npu is not installed")
                continue
        status = get_backend(name).availability()
        if status.available:
            return name, ""
        reasons.append(f"{name}: {status.reason.split('. ')[0]}")
    return None, "needs a CUDA GPU or an Ascend NPU (" + "; ".join(reasons) + ")"


@pytest.fixture(scope="session")
def device_backend():
    """The real accelerator's Backend for the `device` tests; skips them, with the reason, on a host without one."""
    name, reason = real_accelerator()
    if name is None:
        pytest.skip(reason)
    from llama_hw.backends import get_backend

    return get_backend(name)


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
