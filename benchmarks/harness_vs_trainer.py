"""Does `bench run` measure what training runs at? Its effective tokens/s against `llama_hw.train` timed from outside.

Both sides train the same checkpoint (bench-20m with random weights, saved once with the LLaMA-2 tokenizer)
on the same data, padding, micro batch, sequence length, data order, patches and precision, each in a fresh
process. The trainer side is `llama_hw.train`'s own session with one extra Trainer callback that notes the
time and Trainer's own count of non-padding tokens (`include_num_input_tokens_seen="non_padding"`) at the
end of every step: nothing of the harness (its meter, token counter or stop rule) is involved. Runs
alternate trainer / bench / bench / trainer (ABBA per round) so that neither side always runs first and a
change in machine load hits both. Printed: each run's effective tokens/s (total tokens over total time,
as `bench run` reports it) and its median per-step rate (robust to a few steps slowed by other jobs), the
medians of both over the runs, their ratios, and the load average around every run.

    python benchmarks/harness_vs_trainer.py [--padding dynamic packed] [--rounds 2] [--steps 30] [--warmup 2]
        [--seq-len 2048] [--micro-batch 4] [--output F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from llama_hw.utils.shared import shared_path

ALPACA = str(shared_path("data", "alpaca", "alpaca_en_demo.json"))
TOKENIZER = shared_path("data", "tokenizers", "llama2")


def save_model(directory: Path) -> Path:
    """bench-20m's random weights (the bench preset's own initialisation, seed 0) as a checkpoint with a tokenizer."""
    import torch

    from llama_hw.bench.presets import preset_shape
    from llama_hw.bench.session import preset_model

    model = preset_model(preset_shape("bench-20m"), torch.float32, torch.device("cpu"), seed=0)
    model.save_pretrained(directory, safe_serialization=True)
    for item in TOKENIZER.iterdir():
        shutil.copy(item, directory / item.name)
    return directory


def trainer_worker(argv: list[str], warmup: int) -> dict:
    """Run `llama_hw.train` with a step timer; the effective tokens/s of the steps after `warmup`."""
    from transformers import TrainerCallback

    from llama_hw.train.config import parse_args
    from llama_hw.train.session import build_session

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    timer = StepTimer()
    config = parse_args(argv)
    # set here: HfArgumentParser reads this str-or-bool field as a bool and refuses "non_padding"
    config.training["include_num_input_tokens_seen"] = "non_padding"
    session = build_session(config, callbacks=[timer])
    session.trainer.train()
    (start, tokens_start), (end, tokens_end) = timer.marks[warmup], timer.marks[-1]
    pairs = list(zip(timer.marks[warmup:], timer.marks[warmup + 1:]))
    steps = [b[0] - a[0] for a, b in pairs]
    return {"effective_tokens_per_s": (tokens_end - tokens_start) / (end - start), "steps": len(steps),
            "step_p50_s": statistics.median(steps), "seconds": end - start,
            "median_step_rate": statistics.median((b[1] - a[1]) / (b[0] - a[0]) for a, b in pairs)}  # fmt: skip


def run_trainer(model: Path, padding: str, args, work: Path) -> dict:
    argv = ["--model_name_or_path", str(model), "--data_path", ALPACA, "--template", "vicuna_v1.1",
            "--model_max_length", str(args.seq_len), "--per_device_train_batch_size", str(args.micro_batch),
            "--max_steps", str(args.warmup + args.steps), "--learning_rate", "2e-5", "--device", "cpu",
            "--output_dir", str(work / "train"), "--overwrite_output_dir", "True", "--save_strategy", "no",
            "--report_to", "none", "--train_sampling_strategy", "sequential", "--seed", "0",
            "--disable_tqdm", "True"]  # fmt: skip
    if padding == "packed":
        argv += ["--packing", "True"]
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from harness_vs_trainer import trainer_worker; "
            f"print('RESULT ' + json.dumps(trainer_worker({argv!r}, {args.warmup})))")  # fmt: skip
    return _result(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True), "RESULT ")


def run_bench(model: Path, padding: str, args, work: Path) -> dict:
    command = [sys.executable, "-m", "llama_hw.bench", "run", "--model", str(model), "--data_path", ALPACA,
               "--template", "vicuna_v1.1", "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch),
               "--padding", padding, "--warmup", str(args.warmup), "--steps", str(args.steps), "--device", "cpu",
               "--precision", "fp32", "--output", str(work / "bench.jsonl"), "--json"]  # fmt: skip
    record = _result(subprocess.run(command, capture_output=True, text=True), "{")
    return {"effective_tokens_per_s": record["tokens_per_s_per_device"]["effective"],
            "steps": record["measured_steps"], "step_p50_s": record["step_time_s"]["p50"],
            "seconds": sum(record["step_times_s"]), "median_step_rate": record["rate_stability"]["median"]}  # fmt: skip


def _result(result: subprocess.CompletedProcess, prefix: str) -> dict:
    if result.returncode != 0:
        sys.exit(f"a run failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    line = [line for line in result.stdout.splitlines() if line.startswith(prefix)][-1]
    return json.loads(line[len("RESULT "):] if prefix == "RESULT " else line)


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--padding", nargs="+", default=["dynamic", "packed"], choices=["dynamic", "packed", "max"])
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds: 2 runs of each side per round")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--output", type=Path, help="write every run and the summary here as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llama_hw_harness_vs_trainer_"))
    report = {"machine": {"cpu": _cpu(), "cpus": os.cpu_count()}, "config": vars(args) | {"output": None},
              "started_at": _now(), "runs": []}  # fmt: skip
    try:
        model = save_model(work / "bench-20m")
        for padding in args.padding:
            for round_number in range(args.rounds):
                for side in ("trainer", "bench", "bench", "trainer"):
                    before = load()
                    result = (run_trainer if side == "trainer" else run_bench)(model, padding, args, work)
                    result.update(side=side, padding=padding, round=round_number + 1, load_before=before,
                                  load_after=load())  # fmt: skip
                    report["runs"].append(result)
                    print(f"{padding:8} round {round_number + 1} {side:8} {result['effective_tokens_per_s']:8,.0f} "
                          f"effective tokens/s, median step {result['median_step_rate']:8,.0f} ({result['steps']} "
                          f"steps, p50 {result['step_p50_s']:.3f} s; load {before:.2f} -> {result['load_after']:.2f})",
                          flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["ended_at"] = _now()
    report["summary"] = {}
    for padding in args.padding:
        summary = {}
        for key in ("effective_tokens_per_s", "median_step_rate"):  # the second is robust to a few slowed steps
            medians = {side: statistics.median(r[key] for r in report["runs"]
                                               if r["padding"] == padding and r["side"] == side)
                       for side in ("trainer", "bench")}  # fmt: skip
            summary[key] = {**medians, "bench_over_trainer": medians["bench"] / medians["trainer"]}
            print(f"{padding} {key}: trainer {medians['trainer']:,.0f}, bench {medians['bench']:,.0f} "
                  f"(bench / trainer {summary[key]['bench_over_trainer']:.3f})")  # fmt: skip
        report["summary"][padding] = summary
    if args.output:
        args.output.write_text(json.dumps(report, indent=1) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _cpu() -> str:
    from llama_hw.backends.cpu import cpu_model_name

    return cpu_model_name()


if __name__ == "__main__":
    main()
