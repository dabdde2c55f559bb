"""`cpu_heap_reuse`: on CPU training glibc keeps freed memory, so a freed large tensor is reused without page
faults; revert brings glibc's defaults back; a user's own allocator choice is kept.

The page-fault counts come from a fresh interpreter (glibc's state in this one depends on earlier tests)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env
from llama_hw.backends.cpu import CpuBackend
from llama_hw.backends.cuda import CudaBackend
from llama_hw.patches import describe_patches

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the patch is for glibc's malloc")

# 64 MiB: above the largest mmap threshold glibc picks by itself (32 MiB), so unpatched it is a fresh mmap
FAULTS_OF_A_REUSED_TENSOR = """
import json, resource, torch
from llama_hw.backends.cpu import CpuBackend
from llama_hw.patches import apply_patches

PAGES = 64 * 2**20 // resource.getpagesize()

def faults_of_second_allocation():
    torch.ones(64 * 2**20 // 4)  # allocated, written, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20 // 4)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

stock = faults_of_second_allocation()
report = apply_patches(None, CpuBackend(), "train", selection="cpu_heap_reuse")
patched = faults_of_second_allocation()
report.revert()
reverted = faults_of_second_allocation()
print(json.dumps({"pages": PAGES, "applied": report.applied, "stock": stock, "patched": patched,
                  "reverted": reverted}))
"""


def huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: then a fresh 64 MiB costs a few dozen faults, patched or not."""
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return setting.exists() and "[always]" in setting.read_text()


def test_a_freed_tensor_is_reused_without_page_faults_and_revert_restores_glibc_defaults():
    run = subprocess.run([sys.executable, "-c", FAULTS_OF_A_REUSED_TENSOR], env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    faults = json.loads(run.stdout.strip().splitlines()[-1])
    assert faults["applied"] == ["cpu_heap_reuse"]
    assert faults["patched"] < faults["pages"] // 100, faults  # the heap kept the first tensor's pages
    if huge_pages_always():
        pytest.skip("transparent huge pages are 'always' here: unpatched allocations fault too little to compare")
    assert faults["stock"] > faults["pages"] // 2, faults  # a fresh mapping: a fault per page
    assert faults["reverted"] > faults["pages"] // 2, faults  # glibc's mmap for large blocks is back


def describe(backend=None, mode="train") -> dict:
    return {d["name"]: d for d in describe_patches(backend or CpuBackend(), mode=mode)}["cpu_heap_reuse"]


def test_applies_to_cpu_training_only(monkeypatch):
    for name in ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_",
                 "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "LLAMA_HW_PATCHES"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert describe()["status"] == "applies"
    assert describe(mode="infer")["reason"] == "for train only"
    assert "cpu_heap_reuse" not in {d["name"] for d in describe_patches(CudaBackend())}


@pytest.mark.parametrize(
    "variable, value",
    [
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        ("MALLOC_TRIM_THRESHOLD_", "1000000"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0"),
    ],
)
def test_a_users_own_allocator_setting_is_kept(monkeypatch, variable, value):
    monkeypatch.delenv("LLAMA_HW_PATCHES", raising=False)
    monkeypatch.setenv(variable, value)
    described = describe()
    assert described["status"] == "skipped"
    assert described["reason"] == f"{variable}={value} is set by the user and kept"
