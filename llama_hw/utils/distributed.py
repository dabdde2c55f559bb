"""What every worker process started by `llama_hw.launch` (torchrun) calls: its place in the job,
process-group start on the selected backend, and a clean end.

The clean end is a barrier, then `destroy_process_group`, so that no rank tears down its connections
while another still uses them. The issue that asked for it measured two one-process "nodes" on loopback
crashing at exit in 3 of 4 runs without it (`terminate called without an active exception`,
`DistNetworkError: Failed to recv`, or the elastic agent's 300 s exit-barrier wait) and 10 of 10 clean
runs with it. With llama_hw.launch's settings (torch 2.13, c10d rendezvous) a small DDP job also ended
cleanly without it here (8 of 8 runs, 4 with restarts enabled); the barrier keeps the end
orderly where a worker hosts the store or a backend tears down asynchronously.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from llama_hw.backends import Backend


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def rank() -> int:
    """Global rank of this process (RANK, set by torchrun); 0 when not launched."""
    return _env_int("RANK", 0)


def local_rank() -> int:
    """Rank of this process on its node (LOCAL_RANK): which local device it binds to."""
    return _env_int("LOCAL_RANK", 0)


def world_size() -> int:
    """Number of processes in the job (WORLD_SIZE); 1 when not launched."""
    return _env_int("WORLD_SIZE", 1)


def local_world_size() -> int:
    return _env_int("LOCAL_WORLD_SIZE", 1)


def restart_count() -> int:
    """How many times the elastic agent restarted this worker group (0 on the first attempt)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


def is_main_process() -> bool:
    return rank() == 0


def is_launched() -> bool:
    """True under torchrun / llama_hw.launch with more than one process."""
    return world_size() > 1


def init_process_group(backend: Backend, timeout: timedelta | None = None) -> torch.device:
    """Bind this process to its local device and join the job's process group on `backend`.

    Returns the bound device. A single, unlaunched process gets its device and no process group.
    """
    device = backend.bind(local_rank())
    if is_launched() and not dist.is_initialized():
        kwargs = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group(backend=backend.dist_backend, **kwargs)
    return device


def end_process_group(clean: bool = True) -> None:
    """Leave the process group: barrier (when `clean`), then destroy it. Safe to call when none exists.

    Pass `clean=False` on an error path: another rank may be dead, and a barrier would then wait for
    the collective timeout instead of letting the elastic agent restart the group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if clean:
        dist.barrier()
    dist.destroy_process_group()
