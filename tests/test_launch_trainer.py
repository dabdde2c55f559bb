"""The launcher's default target, the trainer: a worker SIGKILLed mid-run, an elastic restart, a resume.

Two processes train the demo's tiny Llama (random weights, the demo's letter puzzles) through
`python -m llama_hw.launch --max-restarts 1`. As soon as the first complete checkpoint exists the test
kills one trainer process from outside; the elastic agent restarts the group, the trainer resumes from
that checkpoint and ends with the step count asked for.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import REPO, subprocess_env
from launch_support import free_port
from llama_hw import demo
from llama_hw.train.checkpointing import CHECKPOINT_MARKER

pytestmark = pytest.mark.slow
STEPS, SAVE_EVERY = 120, 10


def trainer_workers(launcher: subprocess.Popen) -> list[psutil.Process]:
    children = psutil.Process(launcher.pid).children(recursive=True)
    return [p for p in children if "llama_hw.train" in " ".join(p.cmdline())]


def test_killed_trainer_restarts_and_resumes_from_its_checkpoint(tmp_path):
    model = demo.write_initial_model(tmp_path / "initial")
    output = tmp_path / "output"
    args = [
        "--model_name_or_path", str(model), "--data_path", str(demo.TRAIN_DATA), "--template", demo.DEMO.template,
        "--model_max_length", "64", "--output_dir", str(output), "--max_steps", str(STEPS),
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--save_steps", str(SAVE_EVERY),
        "--logging_steps", "10", "--report_to", "none", "--seed", "0",
    ]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "llama_hw.launch", "--device", "cpu", "--nproc-per-node", "2", "--max-restarts", "1",
         "--master-port", str(free_port()), "--", *args],
        cwd=REPO, env=subprocess_env(LLAMA_HW_CACHE_DIR=str(tmp_path / "cache")), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (output / f"checkpoint-{SAVE_EVERY}" / CHECKPOINT_MARKER).is_file():
            assert launcher.poll() is None, launcher.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.05)
        victim = trainer_workers(launcher)[-1]
        victim.send_signal(signal.SIGKILL)
        log, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 0, log[-4000:]
    assert "exitcode: -9" in log  # the agent saw the kill and restarted the group
    assert "elastic restart 1: resuming from the latest complete checkpoint" in log
    resumed = [int(step) for step in re.findall(r"resuming from \S*checkpoint-(\d+)", log)]
    assert resumed and resumed[0] >= SAVE_EVERY and resumed[0] % SAVE_EVERY == 0
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == STEPS
    assert (output / "llama_hw.json").is_file() and (output / "model.safetensors").is_file()
