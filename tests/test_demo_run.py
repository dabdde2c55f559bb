"""`python -m llama_hw.launch` with no arguments: the embedded demo trains, learns, and leaves a chat model."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    # The demo's own thread count (cores / processes): it is what the README's first command does.
    env = subprocess_env(LLAMA_HW_CACHE_DIR=str(workdir / "cache"))
    env.pop("OMP_NUM_THREADS")
    result = subprocess.run([sys.executable, "-m", "llama_hw.launch"], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result.stdout + result.stderr


def test_demo_learns_the_held_out_puzzles(demo_run):
    _, output = demo_run
    before = re.search(r"untrained model on the held-out puzzles: exact match ([\d.]+)%", output)
    after = re.search(r"demo: trained model on the held-out puzzles: exact match ([\d.]+)%", output)
    assert before and after, output[-3000:]
    assert float(before.group(1)) == 0.0
    assert float(after.group(1)) >= 75.0  # measured 89.3% (seed 0, 2 threads)
    assert re.search(r"demo: 800 steps in [\d.]+ s, [\d,]+ tokens/s/device", output)
    losses = [float(value) for value in re.findall(r"'loss': '([\d.]+)'", output)]
    assert len(losses) >= 10 and losses[-1] < losses[0] / 10  # the trainer's log: loss going down


def test_demo_model_talks_in_chat(demo_run):
    workdir, _ = demo_run
    result = subprocess.run(
        [sys.executable, "-m", "llama_hw.chat", "--model-path", str(workdir / "output" / "demo"),
         "--temperature", "0", "--prompt", "reverse: l a m p"],
        cwd=workdir, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "p m a l"
