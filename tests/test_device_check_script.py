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
