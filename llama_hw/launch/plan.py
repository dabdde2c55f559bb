"""What one node's launcher runs: torchrun's arguments, the workers' environment and the target.

Values come from the flags, else from a Slurm job, else from the environment the user set, else from
the backend. The plan is pure data: `--dry-run` prints it, `recipe.main` hands it to torchrun.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llama_hw.backends import AUTO, DEVICE_ENV, Backend, get_backend, select_backend
from llama_hw.errors import UsageError
from llama_hw.launch.slurm import detect_slurm

TRAINER_MODULE = "llama_hw.train"
DEFAULT_MASTER_PORT = 29500  # torchrun's
DEFAULT_RDZV_ID = "llama_hw"
# c10d re-forms the group after a failure on any node, so `--max-restarts` works across nodes;
# static rendezvous cannot (the surviving nodes never rejoin: measured here on loopback).
RDZV_BACKENDS = ("c10d", "static")
# How long a node waits for the others (and for node 0's store) before it gives up: torch's own default.
DEFAULT_RDZV_TIMEOUT = 600
# With the c10d rendezvous torch (2.5+) shares the agent's store with the workers and keeps it across
# restarts, so restarted workers can read their peers' addresses from the failed attempt and
# fail to connect (pytorch/pytorch#135712, #167288; measured here: gloo "connectFullMesh failed" after
# about half of the restarts). Opting out gives every attempt a fresh store.
FRESH_STORE_PER_RESTART = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@dataclass
class LaunchOptions:
    """The launcher's flags; None means "not given": a default is derived."""

    device: str | None = None
    nodes: int | None = None
    nproc_per_node: int | None = None
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_id: str | None = None
    rdzv_backend: str = "c10d"
    rdzv_timeout: int = DEFAULT_RDZV_TIMEOUT
    max_restarts: int = 0
    hostfile: Path | None = None
    ssh_port: int | None = None
    script: Path | None = None
    config: Path | None = None
    target_args: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def runs_demo(self) -> bool:
        """No script, config or trainer arguments: the embedded demo (`python -m llama_hw.launch`)."""
        return self.script is None and self.config is None and not self.target_args


@dataclass(frozen=True)
class Target:
    """The program every worker runs: a module (`python -m`) or a script, and its arguments."""

    module: str | None
    script: Path | None
    args: list[str]

    def torchrun_tail(self) -> list[str]:
        if self.module is not None:
            return ["--module", self.module, *self.args]
        return [str(self.script), *self.args]

    def describe(self) -> str:
        head = ["python", "-m", self.module] if self.module is not None else ["python", str(self.script)]
        return shlex.join(head + self.args)


@dataclass
class NodePlan:
    backend: Backend
    nodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    rdzv_backend: str
    rdzv_id: str
    rdzv_timeout: int
    max_restarts: int
    target: Target
    env: dict[str, str]  # what the launcher sets for the workers
    kept_env: dict[str, str]  # defaults the user had already set: theirs win
    notes: list[str]  # where values came from; what a dry run could not check

    def torchrun_args(self) -> list[str]:
        """Arguments for torch.distributed.run (torchrun), exactly as `recipe.main` passes them."""
        endpoint = f"{self.master_addr}:{self.master_port}"
        args = [
            f"--nnodes={self.nodes}",
            f"--nproc-per-node={self.nproc_per_node}",
            f"--node-rank={self.node_rank}",
            f"--master-addr={self.master_addr}",
            f"--master-port={self.master_port}",
            f"--rdzv-backend={self.rdzv_backend}",
            f"--rdzv-id={self.rdzv_id}",
            f"--max-restarts={self.max_restarts}",
        ]
        if self.rdzv_backend == "static":
            args.append(f"--rdzv-conf=timeout={self.rdzv_timeout}")
        else:
            # The node at --master-addr (rank 0) hosts the rendezvous store; saying so beats
            # torchrun's guess from host names, which fails behind NAT or with several addresses.
            args += [f"--rdzv-endpoint={endpoint}",
                     f"--rdzv-conf=is_host={int(self.node_rank == 0)},join_timeout={self.rdzv_timeout}"]
        return args + self.target.torchrun_tail()

    def command_line(self) -> str:
        return shlex.join([sys.executable, "-m", "torch.distributed.run", *self.torchrun_args()])


def resolve_backend(device: str | None, dry_run: bool) -> tuple[Backend, list[str]]:
    """The backend to launch on. A dry run describes the requested one even when it is unavailable."""
    if not dry_run:
        selection = select_backend(device)
        return selection.backend, [f"device: {selection.backend.name} ({selection.reason})"]
    requested = device or os.environ.get(DEVICE_ENV, "").strip() or AUTO
    if requested == AUTO:
        selection = select_backend(None)
        return selection.backend, [f"device: {selection.backend.name} ({selection.reason})"]
    backend = get_backend(requested)
    status = backend.availability()
    if status.available:
        return backend, [f"device: {backend.name} (requested)"]
    return backend, [
        f"device: {backend.name} (requested; NOT available on this machine, so this dry run only "
        f"describes it: {status.reason})"
    ]


def default_nproc(backend: Backend, environ: Mapping[str, str]) -> tuple[int, str | None]:
    """The backend's visible device count; without the device, the visible-devices list or 1."""
    if backend.availability().available:
        return max(1, backend.device_count()), None
    visible = environ.get(backend.visible_devices_env or "", "")
    if visible.strip():
        count = len([item for item in visible.split(",") if item.strip()])
        return count, f"nproc-per-node: {count}, from {backend.visible_devices_env}={visible}"
    return 1, "nproc-per-node: 1, as the device count is unknown here; pass --nproc-per-node"


def worker_env(
    backend: Backend, nproc: int, max_restarts: int, environ: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(variables to set, defaults the user already set) for the elastic agent and its workers."""
    defaults = dict(backend.launcher_env(nproc))
    if max_restarts > 0:
        defaults.update(FRESH_STORE_PER_RESTART)
    if backend.visible_devices_env:
        defaults[backend.visible_devices_env] = ",".join(str(i) for i in range(nproc))
    kept = {key: environ[key] for key in defaults if key in environ}
    env = {key: value for key, value in defaults.items() if key not in environ}
    # Not a default: every worker must pick the backend this launcher resolved.
    env[DEVICE_ENV] = backend.name
    return env, kept


def make_target(options: LaunchOptions, demo_args: list[str] | None) -> Target:
    if options.script is not None:
        if not options.script.is_file():
            raise UsageError(f"--script {options.script}: no such file")
        return Target(None, options.script, list(options.target_args))
    if options.config is not None:
        if not options.config.is_file():
            raise UsageError(f"config file {options.config} not found")
        return Target(TRAINER_MODULE, None, [str(options.config), *options.target_args])
    return Target(TRAINER_MODULE, None, list(demo_args if demo_args is not None else options.target_args))


def plan_node(
    options: LaunchOptions, environ: Mapping[str, str] | None = None, demo_args: list[str] | None = None
) -> NodePlan:
    """Resolve every value one node's launcher needs; raise UsageError for impossible requests."""
    environ = os.environ if environ is None else environ
    if options.rdzv_backend not in RDZV_BACKENDS:
        raise UsageError(f"--rdzv-backend {options.rdzv_backend!r}: choose one of {', '.join(RDZV_BACKENDS)}")
    if options.max_restarts < 0:
        raise UsageError(f"--max-restarts {options.max_restarts}: must be 0 or more")
    if options.rdzv_timeout < 1:
        raise UsageError(f"--rdzv-timeout {options.rdzv_timeout}: must be 1 second or more")

    backend, notes = resolve_backend(options.device, options.dry_run)
    slurm = detect_slurm(environ)
    nodes, node_rank = options.nodes, options.node_rank
    master_addr, rdzv_id = options.master_addr, options.rdzv_id
    if slurm is not None:
        notes.append(
            f"slurm job {slurm.job_id}: {slurm.nodes} nodes, this is node {slurm.node_rank}, "
            f"master {slurm.master_addr}"
        )
        nodes = slurm.nodes if nodes is None else nodes
        node_rank = slurm.node_rank if node_rank is None else node_rank
        master_addr = master_addr or slurm.master_addr
        rdzv_id = rdzv_id or slurm.job_id
    nodes = 1 if nodes is None else nodes
    if nodes < 1:
        raise UsageError(f"--nodes {nodes}: must be 1 or more")
    if node_rank is None:
        if nodes > 1:
            raise UsageError(f"--nodes {nodes} needs --node-rank (0 on the node at --master-addr, then 1..{nodes - 1})")
        node_rank = 0
    if not 0 <= node_rank < nodes:
        raise UsageError(f"--node-rank {node_rank}: must be between 0 and {nodes - 1} for --nodes {nodes}")

    master_addr = master_addr or environ.get("MASTER_ADDR")
    if not master_addr:
        if nodes > 1:
            raise UsageError(f"--nodes {nodes} needs --master-addr: the address of node 0, reachable from every node")
        master_addr = "127.0.0.1"
    port = options.master_port
    if port is None and environ.get("MASTER_PORT"):
        try:
            port = int(environ["MASTER_PORT"])
        except ValueError as err:
            raise UsageError(f"MASTER_PORT={environ['MASTER_PORT']!r} is not a port number") from err
    if port is None:
        # One node needs no agreed port: c10d's store takes a free one (as `torchrun --standalone`),
        # so two single-node jobs on one machine never collide.
        free_port_ok = nodes == 1 and options.rdzv_backend == "c10d"
        port = 0 if free_port_ok else DEFAULT_MASTER_PORT
    elif not 0 < port < 65536:
        raise UsageError(f"--master-port {port}: must be between 1 and 65535")

    nproc = options.nproc_per_node
    if nproc is None:
        nproc, note = default_nproc(backend, environ)
        if note:
            notes.append(note)
    if nproc < 1:
        raise UsageError(f"--nproc-per-node {nproc}: must be 1 or more")

    env, kept = worker_env(backend, nproc, options.max_restarts, environ)
    return NodePlan(
        backend=backend,
        nodes=nodes,
        node_rank=node_rank,
        nproc_per_node=nproc,
        master_addr=master_addr,
        master_port=port,
        rdzv_backend=options.rdzv_backend,
        rdzv_id=rdzv_id or DEFAULT_RDZV_ID,
        rdzv_timeout=options.rdzv_timeout,
        max_restarts=options.max_restarts,
        target=make_target(options, demo_args),
        env=env,
        kept_env=kept,
        notes=notes,
    )
