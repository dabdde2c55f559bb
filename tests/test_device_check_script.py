"""benchmarks/device_check.sh on a host without an accelerator: one line, exit 0, within 30 s, nothing written.

The kit's hardware tests (tests/test_device_kit.py) skip here with their reason; this pins what a maintainer
who runs the script on the wrong machine sees, and that the normal suite never pays for the kit.
"""

from __future__ import annotations

import subprocess
import time

from conftest import REPO, real_accelerator, subprocess_env


def test_on_a_cpu_only_host_the_kit_says_so_in_one_line_and_exits_0_quickly():
    if real_accelerator()[0] is not None:
        import pytest

        pytest.skip("this host has an accelerator: run benchmarks/device_check.sh itself")
    results = sorted((REPO / "benchmarks" / "results").glob("*"))
    start = time.monotonic()
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh")], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stderr == "", (result.stdout, result.stderr)
    assert lines[0].startswith("device check: no CUDA GPU or Ascend NPU on this host (")
    assert lines[0].endswith("nothing to check on a CPU-only machine")
    assert elapsed < 30, elapsed
    assert sorted((REPO / "benchmarks" / "results").glob("*")) == results  # nothing written


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_check", REPO / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_device_kit" name="test_auto_detection_picks_the_accelerator_and_its_peak_is_in_the_table"/>
<testcase classname="tests.test_device_kit" name="test_every_patch_keeps_the_unpatched_numerics[bf16]">
<failure message="AssertionError: ['npu_swiglu: grads 6.1e-02 &gt; 5e-02']&#10;more">trace</failure></testcase>
<testcase classname="tests.test_device_kit" name="test_ddp_on_every_visible_device_matches_one_process">
<skipped message="1 cuda device visible: DDP needs 2 or more"/></testcase>
</testsuite></testsuites>"""


def test_the_verdict_names_each_check_its_result_and_the_bench(tmp_path):
    from llama_hw.backends.cpu import CpuBackend

    script = load_script()
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    outcomes = script.test_outcomes(junit)
    assert [status for _, status, _ in outcomes] == ["PASS", "FAIL", "SKIP"]
    bench = {"check": "bench llama-7b x 4 layers", "name": "llama-7b x4", "mfu_effective": 0.412, "peak_tflops": 989,
             "tokens_per_s_per_device": {"effective": 12345.6}, "peak_memory_bytes": 30 * 2**30}  # fmt: skip
    path = tmp_path / "verdict.md"
    assert script.write_verdict(path, CpuBackend(), outcomes, [bench], 1, 300.0) == "FAIL"
    text = path.read_text()
    assert text.splitlines()[0].endswith("(cpu) — FAIL")
    assert "| test_every_patch_keeps_the_unpatched_numerics[bf16] | FAIL | AssertionError: ['npu_swiglu: grads" in text
    assert ("- bench `llama-7b x4`: 12,346 effective tokens/s per device, MFU 41.2% of the table peak 989 TFLOP/s, "
            "peak memory 30.0 GiB") in text  # fmt: skip
    passing = [outcome for outcome in outcomes if outcome[1] != "FAIL"]
    assert script.verdict_of(passing, 0) == "PASS"  # DDP may skip on one device
    assert script.verdict_of([*passing, ("test_bench", "SKIP", "shared test data not found")], 0) == "INCOMPLETE"
    assert script.verdict_of(passing, 124) == "INCOMPLETE"
