"""The device check kit: what only a real CUDA GPU or Ascend NPU can show (run by benchmarks/device_check.sh).

Every test here is marked `device` and takes the `device_backend` fixture, which skips it with the reason on
a host without an accelerator, so the normal suite pays nothing for them. On hardware they check:

- detection: auto-detection picks the accelerator, and its peak table knows the chip;
- numerics: each runtime patch against the same model without it, in bf16 and fp16 (TOLERANCES);
- training: 20 steps of full and LoRA fine-tuning of stories260K match a CPU fp32 run (TRAINING_RTOL);
- DDP over every visible device matches one process;
- a bench run of the llama-7b shapes shrunk to 4 layers, with MFU against the table peak (or the
  LLAMA_HW_PEAK_TFLOPS override, which the record names).

With LLAMA_HW_DEVICE_RESULTS=FILE.jsonl each check appends one JSON line with its numbers.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import torch

from patches_support import padded_batch, random_gqa_llama
from train_support import logged_losses, small_run, torchrun_train, train_cli

pytestmark = pytest.mark.device

RESULTS_ENV = "LLAMA_HW_DEVICE_RESULTS"
# Largest relative difference patched vs unpatched, same dtype: |a - b|.norm() / |b|.norm() (logits, each
# gradient) and |a - b| / |b| (loss). bf16 keeps 8 mantissa bits (2^-8 = 3.9e-3 per rounding), fp16 11
# (4.9e-4); a fused kernel rounds at other points than the eager ops, and gradients add a backward's worth.
TOLERANCES = {
    "bf16": {"loss": 1e-2, "logits": 2e-2, "grads": 5e-2},
    "fp16": {"loss": 2e-3, "logits": 5e-3, "grads": 2e-2},
}
# Per-step relative loss difference of a device run against the CPU fp32 run of the same 20 steps. fp32 on the
# device (TF32 off, torch's default) differs only in reduction order; bf16 / fp16 autocast rounds every GEMM.
TRAINING_RTOL = {"fp32": 1e-3, "bf16": 3e-2, "fp16": 1e-2}
TRAIN_STEPS = "20"


def record(check: str, **numbers) -> None:
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"check": check, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     **numbers}) + "\n")  # fmt: skip


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# -- detection ---------------------------------------------------------------------------------------------


def test_auto_detection_picks_the_accelerator_and_its_peak_is_in_the_table(device_backend):
    from llama_hw.backends import select_backend

    selected = select_backend(None).backend
    assert selected.name == device_backend.name
    precision = device_backend.default_precision()
    assert precision in ("bf16", "fp16"), device_backend.supported_precisions()
    peak = device_backend.table_peak_tflops(precision)
    record("detection", backend=device_backend.name, device=device_backend.device_name(),
           count=device_backend.device_count(), precisions=list(device_backend.supported_precisions()),
           table_peak_tflops=peak)  # fmt: skip
    assert peak is not None, (f"{device_backend.device_name()} is not in llama_hw/backends/"
                              f"{device_backend.name}.py's peak table: add its dense {precision} TFLOP/s")  # fmt: skip


# -- every patch's numerics --------------------------------------------------------------------------------


def model_patches(backend) -> list[str]:
    from llama_hw.patches import describe_patches

    return [d["name"] for d in describe_patches(backend, "llama", "train") if d["scope"] == "model"]


def run_once(backend, precision: str, selection: str):
    """Loss, logits at real tokens and gradients of a GQA Llama in `precision` on the device, patched by `selection`."""
    from llama_hw.backends import TORCH_DTYPES
    from llama_hw.patches import apply_patches

    device = backend.bind(0)
    model = random_gqa_llama().to(device=device, dtype=TORCH_DTYPES[precision]).train()
    report = apply_patches(model, backend, "train", selection=selection)
    try:
        ids, mask = padded_batch([64, 57, 40], 64, "right", model.config.vocab_size)
        ids, mask = ids.to(device), mask.to(device)
        labels = ids.masked_fill(mask == 0, -100)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        logits = out.logits if out.logits is not None else None
        if logits is None:  # the chunked head returns no logits in training: take them from an eval pass
            model.eval()
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits
        grads = {name: p.grad.float().cpu() for name, p in model.named_parameters() if p.grad is not None}
        return report.applied, out.loss.float().cpu(), logits[mask.bool()].float().cpu(), grads
    finally:
        report.revert()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_every_patch_keeps_the_unpatched_numerics(device_backend, precision):
    if precision not in device_backend.supported_precisions():
        pytest.skip(f"{device_backend.device_name()} does not run {precision}")
    limits = TOLERANCES[precision]
    failures, measured = [], {}
    applied, loss, logits, grads = run_once(device_backend, precision, "all")
    for name in ["all", *model_patches(device_backend)]:
        reference_selection = "none" if name == "all" else f"all,-{name}"  # "all": every patch against none
        if name != "all" and name not in applied:
            measured[name] = "not applied with all patches on"
            continue
        _, ref_loss, ref_logits, ref_grads = run_once(device_backend, precision, reference_selection)
        worst_grad = max(relative(grads[key], ref_grads[key]) for key in ref_grads)
        numbers = {"loss": abs((loss - ref_loss) / ref_loss).item(), "logits": relative(logits, ref_logits),
                   "grads": worst_grad}  # fmt: skip
        measured[name] = numbers
        failures += [f"{name}: {what} {value:.2e} > {limits[what]:.0e}" for what, value in numbers.items()
                     if value > limits[what]]  # fmt: skip
    record("patch numerics", backend=device_backend.name, precision=precision, tolerances=limits, measured=measured)
    assert not failures, failures


# -- training against the CPU ------------------------------------------------------------------------------


def worst_difference(losses: list[float], reference: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True))


@pytest.fixture(scope="module")
def cpu_references(tmp_path_factory, stories260k_dir, dummy_conversations):
    """Losses of 20 CPU fp32 steps, full and LoRA, each run twice: a reference that does not repeat itself
    would make the device look wrong (the difference of the two is kept for the test to check first)."""
    references = {}
    for kind in ("full", "lora"):
        runs = []
        for repeat in range(2):
            out = tmp_path_factory.mktemp(f"cpu_{kind}_{repeat}") / "out"
            result = train_cli(small_run(stories260k_dir, dummy_conversations, out, "--max_steps", TRAIN_STEPS,
                                         "--device", "cpu", *lora_flags(kind)))  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            runs.append(logged_losses(out))
        references[kind] = (runs[0], worst_difference(runs[1], runs[0]))
    return references


def lora_flags(kind: str) -> list[str]:
    return ["--finetuning_type", "lora", "--lora_r", "8"] if kind == "lora" else []


def precision_flags(precision: str) -> list[str]:
    return [] if precision == "fp32" else [f"--{precision}", "True"]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_twenty_steps_on_the_device_match_the_cpu(device_backend, cpu_references, kind, tmp_path, stories260k_dir,
                                                 dummy_conversations):  # fmt: skip
    for precision in ("fp32", device_backend.default_precision()):
        out = tmp_path / precision
        result = train_cli(small_run(stories260k_dir, dummy_conversations, out, "--max_steps", TRAIN_STEPS,
                                     "--device", device_backend.name, *precision_flags(precision),
                                     *lora_flags(kind)))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        (reference, cpu_repeat), losses = cpu_references[kind], logged_losses(out)
        worst = worst_difference(losses, reference)
        record("training vs cpu fp32", backend=device_backend.name, kind=kind, precision=precision,
               steps=len(losses), worst_relative_step_difference=worst, rtol=TRAINING_RTOL[precision],
               cpu_repeat_difference=cpu_repeat, device_losses=losses, cpu_losses=reference)  # fmt: skip
        assert cpu_repeat <= TRAINING_RTOL["fp32"], (
            f"two identical CPU {kind} runs differ by {cpu_repeat:.1e}: the run is not reproducible on the CPU "
            "itself, so no device comparison can pass (for LoRA: adapters initialised before the run is seeded)")
        assert worst <= TRAINING_RTOL[precision], (precision, losses, reference)


def test_ddp_on_every_visible_device_matches_one_process(device_backend, tmp_path, stories260k_dir,
                                                         dummy_conversations):  # fmt: skip
    count = device_backend.device_count()
    if count < 2:
        pytest.skip(f"{count} {device_backend.name} device visible: DDP needs 2 or more")
    steps, global_batch = "4", 2 * count
    single = tmp_path / "single"
    result = train_cli(small_run(stories260k_dir, dummy_conversations, single, "--max_steps", steps,
                                 "--device", device_backend.name, "--per_device_train_batch_size", str(global_batch)))
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = tmp_path / "ddp"
    result = torchrun_train(count, small_run(stories260k_dir, dummy_conversations, ddp, "--max_steps", steps,
                                             "--device", device_backend.name, "--per_device_train_batch_size", "2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{count} process(es)" in result.stdout
    worst = worst_difference(logged_losses(ddp), logged_losses(single))
    record("ddp", backend=device_backend.name, processes=count, worst_relative_step_difference=worst)
    assert worst <= TRAINING_RTOL["fp32"]


# -- the bench ----------------------------------------------------------------------------------------------


def test_bench_of_the_llama_7b_shapes_reports_mfu_against_the_table_peak(device_backend, tmp_path):
    import subprocess

    from conftest import REPO, subprocess_env

    output = tmp_path / "bench.jsonl"
    precision = device_backend.default_precision()
    command = [sys.executable, "-m", "llama_hw.bench", "run", "--model", "llama-7b", "--layers", "4",
               "--seq-len", "2048", "--micro-batch", "4", "--warmup", "2", "--steps", "6",
               "--device", device_backend.name, "--precision", precision,
               "--json", "--output", str(output)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout.strip().splitlines()[-1])
    results = os.environ.get(RESULTS_ENV)
    if results:
        with open(results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"check": "bench llama-7b x 4 layers", **run}) + "\n")
    assert run["peak_tflops"] == device_backend.peak_tflops(precision)  # the table's, or LLAMA_HW_PEAK_TFLOPS
    assert 0 < run["mfu_effective"] < 1, run["mfu_effective"]
