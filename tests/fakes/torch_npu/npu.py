"""Fake `torch.npu` device module: the CUDA-style API torch_npu provides, with CPU-side bookkeeping."""

import os

_state = {"current": 0, "peak": 0, "allocated": 0, "seed": None, "synchronized": 0, "jit_compile": True}


def device_count() -> int:
    return int(os.environ.get("FAKE_NPU_COUNT", "8"))


def is_available() -> bool:
    return device_count() > 0


def get_device_name(index: int = 0) -> str:
    return os.environ.get("FAKE_NPU_NAME", "Ascend910B3")


def set_device(index: int) -> None:
    _state["current"] = index


def current_device() -> int:
    return _state["current"]


def synchronize(device=None) -> None:
    _state["synchronized"] += 1


def manual_seed_all(seed: int) -> None:
    _state["seed"] = seed


def memory_allocated(device=None) -> int:
    return _state["allocated"]


def max_memory_allocated(device=None) -> int:
    return _state["peak"]


def reset_peak_memory_stats(device=None) -> None:
    _state["peak"] = _state["allocated"]


def set_compile_mode(jit_compile: bool = True) -> None:
    _state["jit_compile"] = jit_compile


def is_jit_compile_false() -> bool:
    return not _state["jit_compile"]


def _is_in_bad_fork() -> bool:
    return False
