"""The device check kit (benchmarks/device_check.sh): prove llama_hw on one CUDA GPU or Ascend NPU in minutes.

Runs the `device` tests (tests/test_device_kit.py: detection and peak table, every patch's bf16 / fp16
numerics, 20-step full and LoRA runs against the CPU, DDP when 2+ devices are visible, a bench run of the
llama-7b shapes shrunk to 4 layers) and writes

    benchmarks/results/<device>.jsonl   one JSON line per check with its numbers (the bench record included)
    benchmarks/results/<device>.md      the verdict: PASS / FAIL per check, the bench's tokens/s and MFU

where <device> is the backend and product, e.g. cuda-nvidia-h100-80gb-hbm3 or npu-ascend910b3. On a host
without an accelerator it says so in one line and exits 0. Exit status: 0 PASS (every check passed; DDP may
skip on one device), 1 FAIL or INCOMPLETE (a check failed, or skipped for a missing prerequisite such as the
test data), 2 the tests did not finish.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
KIT = "tests/test_device_kit.py"
BUDGET_S = 450  # the tests' share of the kit's 8 minutes; the rest is start-up and the verdict


def no_accelerator_stack() -> str | None:
    """Why no accelerator can be here, read from the installed packages without importing torch (seconds on a
    busy host), or None when torch_npu is installed or torch is a CUDA build and the backends must look."""
    import importlib.util

    if importlib.util.find_spec("torch_npu") is not None:
        return None
    torch_spec = importlib.util.find_spec("torch")
    if torch_spec is None or not torch_spec.submodule_search_locations:
        return "torch is not installed"
    version_file = Path(next(iter(torch_spec.submodule_search_locations))) / "version.py"
    text = version_file.read_text(encoding="utf-8") if version_file.exists() else ""
    match = re.search(r"^cuda\s*(?::\s*\S+\s*)?=\s*(.+)$", text, re.MULTILINE)
    if match is None or match.group(1).strip() != "None":
        return None
    build = re.search(r"^__version__\s*=\s*'([^']+)'", text, re.MULTILINE)
    return (f"npu: torch_npu is not installed; cuda: this torch ({build.group(1) if build else '?'}) is a build "
            "without CUDA support")  # fmt: skip


def find_accelerator():
    """The first available CUDA / Ascend backend, or (None, why none): never the CPU."""
    why = no_accelerator_stack()
    if why is not None:
        return None, why
    from llama_hw.backends import backend_classes

    reasons = []
    for name, cls in backend_classes().items():
        if name == "cpu":
            continue
        status = cls().availability()
        if status.available:
            return cls(), ""
        reasons.append(f"{name}: {status.reason.split('. ')[0]}")
    return None, "; ".join(reasons)


def device_slug(backend) -> str:
    product = re.sub(r"[^a-z0-9]+", "-", backend.device_name().lower()).strip("-")
    return f"{backend.name}-{product}"


def versions() -> dict[str, str | None]:
    from llama_hw.utils.imports import package_version

    names = ("torch", "torch-npu", "transformers", "accelerate", "peft", "deepspeed", "flash-attn", "liger-kernel")
    return {name: package_version(name) for name in names}


def git_commit() -> str | None:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() or None


def run_tests(results: Path, junit: Path, budget_s: int) -> int:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "device", KIT, "-p", "no:cacheprovider", "-rA",
               f"--junitxml={junit}"]  # fmt: skip
    env = {**os.environ, "LLAMA_HW_DEVICE_RESULTS": str(results)}
    try:
        return subprocess.run(command, cwd=REPO, env=env, timeout=budget_s).returncode
    except subprocess.TimeoutExpired:
        print(f"device check: the tests ran past {budget_s} s and were stopped", file=sys.stderr)
        return 124


def test_outcomes(junit: Path) -> list[tuple[str, str, str]]:
    """(test, PASS / FAIL / SKIP, message) from pytest's JUnit XML."""
    if not junit.exists():
        return []
    outcomes = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "?")
        status, message = "PASS", ""
        for child in case:
            if child.tag in ("failure", "error"):
                status, message = "FAIL", ((child.get("message") or "").splitlines() or [""])[0][:200]
            elif child.tag == "skipped":
                status, message = "SKIP", (child.get("message") or "")[:200]
        outcomes.append((name, status, message))
    return outcomes


def bench_lines(records: list[dict]) -> list[str]:
    runs = [r for r in records if r.get("check", "").startswith("bench")]
    lines = []
    for run in runs:
        tokens = run.get("tokens_per_s_per_device", {})
        lines.append(
            f"- bench `{run.get('name')}`: {tokens.get('effective', 0):,.0f} effective tokens/s per device, "
            f"MFU {run.get('mfu_effective', 0):.1%} of the table peak {run.get('peak_tflops')} TFLOP/s, "
            f"peak memory {run.get('peak_memory_bytes', 0) / 2**30:.1f} GiB"
        )
    return lines


ALLOWED_SKIP = "DDP needs 2 or more"  # the one check that one device cannot run


def verdict_of(outcomes, code: int) -> str:
    """PASS: every check passed (DDP may skip on one device); FAIL: one failed; INCOMPLETE: others skipped or
    the tests did not finish (missing test data, a timeout)."""
    if any(status == "FAIL" for _, status, _ in outcomes):
        return "FAIL"
    if code not in (0, 1) or not outcomes:
        return "INCOMPLETE"
    if any(status == "SKIP" and ALLOWED_SKIP not in message for _, status, message in outcomes):
        return "INCOMPLETE"
    return "PASS"


def write_verdict(path: Path, backend, outcomes, records, code: int, seconds: float) -> str:
    verdict = verdict_of(outcomes, code)
    lines = [
        f"# Device check: {backend.device_name()} ({backend.name}) — {verdict}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {git_commit()}, {backend.device_count()} "
        f"device(s) visible, {seconds:.0f} s. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items() if v),
        "",
        "| check | result | note |",
        "|---|---|---|",
        *(f"| {name} | {status} | {message.replace('|', '/')} |" for name, status, message in outcomes),
        "",
        *bench_lines(records),
    ]
    if code not in (0, 1):
        lines += ["", f"pytest exited with {code}: the tests did not finish (see the console output)."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=BUDGET_S, help=f"seconds the tests may run; default {BUDGET_S}")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where <device>.jsonl and .md go; "
                        "default benchmarks/results")  # fmt: skip
    args = parser.parse_args(argv)
    backend, why = find_accelerator()
    if backend is None:
        print(f"device check: no CUDA GPU or Ascend NPU on this host ({why}); nothing to check on a CPU-only machine")
        return 0
    args.results_dir.mkdir(parents=True, exist_ok=True)
    slug = device_slug(backend)
    results, verdict = args.results_dir / f"{slug}.jsonl", args.results_dir / f"{slug}.md"
    results.write_text(json.dumps({"check": "start", "device": backend.device_name(), "backend": backend.name,
                                   "count": backend.device_count(), "commit": git_commit(),
                                   "versions": versions()}) + "\n", encoding="utf-8")  # fmt: skip
    print(f"device check: {backend.device_name()} ({backend.name}); results in {results}", flush=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "junit.xml"
        code = run_tests(results, junit, args.budget)
        outcomes = test_outcomes(junit)
    records = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
    outcome = write_verdict(verdict, backend, outcomes, records, code, time.monotonic() - start)
    print(f"device check: {outcome}; verdict in {verdict} (send it and {results.name} back)")
    return {"PASS": 0, "FAIL": 1}.get(outcome, 1 if code in (0, 1) else 2)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
