"""Run the embedded demo once and print what the docs may quote about it, with the machine it ran on.

Timing and accuracy figures in the documentation come from this script's output, never from prose: the
demo's wall time depends on the CPU model, its core count and whatever else the machine is doing, so every
figure is printed next to the CPU model, the cores, the load average before and after, and the versions.

    python benchmarks/demo_timing.py [LAUNCH FLAGS...]     # e.g. --device cuda, --nproc-per-node 2

The demo runs in a temporary working directory (its `output/demo/` is removed afterwards). Exit code: the
launcher's.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXACT_MATCH = re.compile(r"demo: (untrained|trained) model on the held-out puzzles: exact match ([\d.]+)% \((\d+)/(\d+)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    result = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def run_demo(launch_flags: list[str], workdir: Path) -> tuple[int, str, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "llama_hw.launch", *launch_flags], cwd=workdir,
                            capture_output=True, text=True, check=False)
    return result.returncode, result.stdout + result.stderr, time.perf_counter() - started


def training_log(output_dir: Path) -> dict:
    state_file = output_dir / "trainer_state.json"
    if not state_file.is_file():
        return {}
    history = json.loads(state_file.read_text(encoding="utf-8")).get("log_history", [])
    timed = [entry for entry in history if "train_runtime" in entry]
    return timed[-1] if timed else {}


def main(argv: list[str]) -> int:
    import torch

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="llama_hw_demo_timing_") as tmp:
        code, output, wall = run_demo(argv, Path(tmp))
        log = training_log(Path(tmp) / "output" / "demo")
    load_after = load_average()
    if code != 0:
        sys.stderr.write(output[-4000:])
        print(f"error: the demo exited with code {code}; its output's tail is above", file=sys.stderr)
        return code
    scores = {kind: (float(pct), int(right), int(total)) for kind, pct, right, total in EXACT_MATCH.findall(output)}
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        f"load average (1/5/15 min): before {load_before}, after {load_after}",
        f"versions: python {platform.python_version()}, torch {torch.__version__}, llama_hw commit {git_commit()}",
        f"command: python -m llama_hw.launch {' '.join(argv)}".rstrip(),
        f"wall time, start to end: {wall:.1f} s",
    ]
    if log:
        steps = log.get("step", 0)
        runtime = log["train_runtime"]
        lines.append(f"training: {steps} steps in {runtime:.1f} s, {steps / runtime:.1f} steps/s")
    for kind in ("untrained", "trained"):
        if kind in scores:
            pct, right, total = scores[kind]
            lines.append(f"held-out exact match, {kind}: {pct:.1f} % ({right}/{total})")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
