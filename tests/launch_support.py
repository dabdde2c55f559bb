"""Support for the launcher tests: a small DDP training job (run as a script) and helpers.

Run under `llama_hw.launch --script tests/launch_support.py -- OUT_DIR [--steps N] [--kill-at S]`, it
trains a tiny torch model with DistributedDataParallel on the backend the launcher selected, writes
an atomic checkpoint every step, resumes from it after an elastic restart, and records each rank's
final weights and history in OUT_DIR for the test to compare. `--kill-at S` makes the last rank
SIGKILL itself after step S on the first attempt only, to exercise `--max-restarts`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llama_hw.backends import select_backend
from llama_hw.utils import distributed

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "llama_hw.launch", *args]


def save_atomically(state: dict, path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill while saving leaves the previous checkpoint intact


def train(out_dir: Path, steps: int, kill_at: int | None) -> None:
    backend = select_backend().backend  # LLAMA_HW_DEVICE, set by the launcher
    device = distributed.init_process_group(backend)
    rank, world = distributed.rank(), distributed.world_size()

    torch.manual_seed(0)  # the same initial weights everywhere; DDP also broadcasts rank 0's
    model = DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    checkpoint = out_dir / "checkpoint.pt"
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]

    losses = []
    for step in range(start, steps):
        # Each rank draws a different shard of the step's batch: without gradient averaging the
        # replicas would drift apart, so identical final weights show DDP really ran.
        generator = torch.Generator().manual_seed(step * 1000 + rank)
        inputs = torch.randn(16, 8, generator=generator)
        targets = inputs.sum(dim=1, keepdim=True).sin()
        loss = nn.functional.mse_loss(model(inputs.to(device)), targets.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if rank == 0:
            save_atomically(
                {"model": model.module.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1},
                checkpoint,
            )
        torch.distributed.barrier()  # nobody runs ahead of the checkpoint it could resume from
        if kill_at == step + 1 and rank == world - 1 and distributed.restart_count() == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save(model.module.state_dict(), out_dir / f"weights_rank{rank}.pt")
    record = {
        "rank": rank,
        "world_size": world,
        "resumed_from_step": start,
        "restart_count": distributed.restart_count(),
        "final_step": steps,
        "losses": losses,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "device": os.environ.get("LLAMA_HW_DEVICE"),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    distributed.end_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args(argv)
    train(args.out_dir, args.steps, args.kill_at)


if __name__ == "__main__":
    main()
