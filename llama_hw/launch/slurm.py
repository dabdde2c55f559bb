"""Slurm: node count, this node's rank and the master address from the job's environment.

Run one launcher per node (`srun --ntasks-per-node=1 python -m llama_hw.launch ...`); each reads
SLURM_NNODES, SLURM_NODEID and the first host of SLURM_JOB_NODELIST. The node list is expanded by
`scontrol show hostnames` when Slurm's tools are on PATH, else by `expand_nodelist`, which handles
Slurm's compressed forms (`gpu[01-03,07]`, `a[1-2]-ib[0-1]`, `n1,n[3-4]`).
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from llama_hw.errors import UsageError


@dataclass(frozen=True)
class SlurmJob:
    nodes: int
    node_rank: int
    master_addr: str | None  # the first host of the node list; None when Slurm gave no list
    job_id: str | None


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: `a[1,3],b` -> [`a[1,3]`, `b`]."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part]


def _expand_range_list(ranges: str, nodelist: str) -> list[str]:
    """`01-03,07` -> [01, 02, 03, 07], keeping the zero padding of each range's start."""
    values = []
    for item in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not match:
            raise UsageError(f"cannot read the Slurm node list {nodelist!r}: bad range {item!r}")
        start, end = match.group(1), match.group(2) or match.group(1)
        width = len(start)
        values += [str(n).zfill(width) for n in range(int(start), int(end) + 1)]
    return values


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a compressed Slurm node list into host names, in order."""
    hosts = []
    for item in _split_top_level(nodelist.strip()):
        # Alternating literal text and bracket groups; every group multiplies the names.
        pieces = re.split(r"\[([^\]]*)\]", item)
        if any("[" in piece or "]" in piece for piece in pieces[::2]):
            raise UsageError(f"cannot read the Slurm node list {nodelist!r}: unbalanced brackets")
        choices = [
            [piece] if index % 2 == 0 else _expand_range_list(piece, nodelist)
            for index, piece in enumerate(pieces)
        ]
        hosts += ["".join(parts) for parts in itertools.product(*choices)]
    return hosts


def slurm_hostnames(nodelist: str) -> list[str]:
    """Host names of a Slurm node list: `scontrol show hostnames` when available, else our parser."""
    if shutil.which("scontrol"):
        result = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.split():
            return result.stdout.split()
    return expand_nodelist(nodelist)


def detect_slurm(environ: Mapping[str, str]) -> SlurmJob | None:
    """The Slurm job this process runs in, or None outside Slurm."""
    if "SLURM_NNODES" not in environ or "SLURM_NODEID" not in environ:
        return None
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or ""
    hosts = slurm_hostnames(nodelist) if nodelist else []
    try:
        nodes, node_rank = int(environ["SLURM_NNODES"]), int(environ["SLURM_NODEID"])
    except ValueError as err:
        raise UsageError(f"SLURM_NNODES / SLURM_NODEID are not integers ({err})") from err
    return SlurmJob(
        nodes=nodes,
        node_rank=node_rank,
        master_addr=hosts[0] if hosts else None,
        job_id=environ.get("SLURM_JOB_ID"),
    )
