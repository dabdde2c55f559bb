"""How much the harness adds to a step: `bench run`'s Trainer + BenchMeter against a bare PyTorch loop.

Both train the same model (the same runtime patches) on the same batches (the same dataset, collator and
data order) with the same optimizer (fused AdamW, as Trainer's default), gradient clipping at 1.0 and a
loss read every step; the bare loop has no Trainer, callbacks, hooks or device synchronization. After one
uncounted run (the process's first pays for page faults and lazy initialisation), runs alternate in ABBA
order so that neither side always goes first and a change in machine load hits both; the result is the
median step time of each and their ratio.

    python benchmarks/overhead.py --repeats 3 --steps 20 --warmup 3 [--padding dynamic] [--output F.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from llama_hw.bench import BenchSpec, build_bench_session
from llama_hw.utils.shared import shared_path
from run_cpu import wait_for_quiet  # noqa: E402 (benchmarks/ is on sys.path when run as a script)


def bare_loop(session, steps: int, warmup: int) -> list[float]:
    """Step times (s) of a plain loop over the session's model, data and collator; warm-up steps dropped."""
    spec = session.spec
    model = session.trainer.model
    model.train()
    loader = torch.utils.data.DataLoader(session.data.dataset, batch_size=spec.micro_batch, shuffle=False,
                                         collate_fn=session.data.collator)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0, fused=True)
    times, losses = [], []
    batches = iter(loader)
    last = time.perf_counter()
    for _ in range(warmup + steps):
        batch = next(batches)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--padding", default="dynamic", choices=["max", "dynamic", "packed"])
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--max-load", type=float, default=1.5, help="start each run below this 1-minute load")
    parser.add_argument("--output", type=Path, help="write the numbers here as JSON")
    args = parser.parse_args()
    spec = BenchSpec(model="bench-20m", seq_len=args.seq_len, micro_batch=args.micro_batch, steps=args.steps,
                     warmup=args.warmup, padding=args.padding, device="cpu",
                     data_path=str(shared_path("data", "alpaca", "alpaca_en_demo.json")),
                     tokenizer=str(shared_path("data", "tokenizers", "llama2")))  # fmt: skip
    def harness_run() -> float:
        wait_for_quiet(args.max_load)
        measured = build_bench_session(spec, progress=False).train()
        return statistics.median(step.seconds for step in measured.measured)

    def bare_run() -> float:
        wait_for_quiet(args.max_load)
        return statistics.median(bare_loop(build_bench_session(spec, progress=False), args.steps, args.warmup))

    bare_run()  # the process's first run pays for page faults and lazy initialisation: not counted
    harness, bare = [], []
    for repeat in range(args.repeats):  # ABBA order: neither side always runs first
        if repeat % 2 == 0:
            harness.append(harness_run())
            bare.append(bare_run())
        else:
            bare.append(bare_run())
            harness.append(harness_run())
        print(f"repeat {repeat + 1}: harness {harness[-1]:.4f} s, bare {bare[-1]:.4f} s per step", flush=True)
    result = {
        "padding": args.padding,
        "harness_step_s": harness,
        "bare_step_s": bare,
        "harness_median_s": statistics.median(harness),
        "bare_median_s": statistics.median(bare),
        "overhead": statistics.median(harness) / statistics.median(bare) - 1,
        "threads": torch.get_num_threads(),
    }
    print(f"harness adds {100 * result['overhead']:+.2f} % to the median step time "
          f"({result['harness_median_s']:.4f} s vs {result['bare_median_s']:.4f} s)")  # fmt: skip
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
