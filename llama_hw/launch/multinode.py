"""`--hostfile`: start every node from one machine, the way DeepSpeed's multi-node runner does.

DeepSpeed's runner reads the hostfile (`worker-0 slots=8` per line) and fans one command out over
pdsh, with `%n` replaced by each host's rank. We reuse its hostfile parser and its pdsh settings
(fan-out, ssh); each host runs this launcher (torchrun underneath) with `--node-rank %n`, instead
of DeepSpeed's own process manager. The variables DeepSpeed's runner does not carry (ASCEND_*,
HCCL_* for Ascend; LLAMA_HW_*) are exported on every node.

pdsh hands the command to each host's login shell as one line. Every word of that line (exported
values, the working folder, the interpreter, every launcher and trainer argument) is quoted with
`shlex.quote`, so `$(...)`, backticks, `;` or spaces in a value reach the node as text; DeepSpeed's
own runner wraps values in double quotes, inside which the remote shell still runs `$(...)`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llama_hw.backends import AUTO, DEVICE_ENV, backend_classes
from llama_hw.errors import UsageError
from llama_hw.launch.plan import LaunchOptions

LAUNCHER_MODULE = "llama_hw.launch"
CARRIED_PREFIXES = ("LLAMA_HW_",)


def _deepspeed_launcher():
    try:
        from deepspeed.launcher import multinode_runner, runner
    except ImportError as err:
        raise UsageError(
            f"--hostfile needs DeepSpeed's launcher ({err}): `pip install 'llama-hw[deepspeed]'`, or start "
            "the launcher on each node yourself with --nodes, --node-rank and --master-addr"
        ) from err
    return runner, multinode_runner


def read_hostfile(path: Path) -> dict[str, int]:
    """Host -> slots, in file order, with DeepSpeed's parser (`host slots=N`, `#` comments)."""
    if not path.is_file():
        raise UsageError(f"--hostfile {path}: no such file")
    runner, _ = _deepspeed_launcher()
    try:
        hosts = runner.fetch_hostfile(str(path))
    except ValueError as err:
        raise UsageError(f"--hostfile {path}: {err} (expected lines like `worker-0 slots=8`)") from err
    return dict(hosts)


def carried_prefixes(device: str | None) -> tuple[str, ...]:
    """Prefixes of the variables exported to every node: the device backend's, plus LLAMA_HW_*.

    With no device named, each node auto-detects its own, so every backend's prefixes are carried.
    """
    requested = device or os.environ.get(DEVICE_ENV, "").strip() or AUTO
    classes = backend_classes()
    if requested != AUTO and requested not in classes:
        raise UsageError(f"unknown device {requested!r}; choose one of {AUTO}, {', '.join(classes)}")
    chosen = classes.values() if requested == AUTO else [classes[requested]]
    prefixes = [prefix for cls in chosen for prefix in cls.forwarded_env_prefixes]
    return tuple(dict.fromkeys([*prefixes, *CARRIED_PREFIXES]))


def carried_env(environ: Mapping[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    return {key: value for key, value in sorted(environ.items()) if key.startswith(prefixes)}


def node_launcher_args(options: LaunchOptions, nodes: int, nproc: int, master_addr: str, node_rank: str) -> list[str]:
    """The arguments of `python -m llama_hw.launch` on one node (`node_rank` may be pdsh's `%n`)."""
    args = []
    if options.device:
        args += ["--device", options.device]
    args += ["--nodes", str(nodes), "--nproc-per-node", str(nproc), "--node-rank", node_rank]
    args += ["--master-addr", master_addr]
    if options.master_port is not None:
        args += ["--master-port", str(options.master_port)]
    if options.rdzv_id:
        args += ["--rdzv-id", options.rdzv_id]
    args += ["--rdzv-backend", options.rdzv_backend, "--rdzv-timeout", str(options.rdzv_timeout),
             "--max-restarts", str(options.max_restarts)]
    if options.script is not None:
        args += ["--script", str(options.script.resolve())]
    if options.config is not None:
        args.append(str(options.config.resolve()))
    if options.target_args:
        args += ["--", *options.target_args]
    return args


@dataclass
class FanOut:
    hosts: dict[str, int]
    exports: dict[str, str]  # exported on every node, as given (remote_command quotes them)
    command: list[str]  # what runs on this machine: pdsh ... REMOTE_LINE
    environment: dict[str, str]  # its environment
    node_commands: list[tuple[str, str]]  # (host, the shell line that host runs)
    runner_available: bool


def remote_command(exports: Mapping[str, str], workdir: str, argv: list[str]) -> str:
    """The one shell line every node runs: exports, `cd`, then `argv`, each word quoted for a POSIX shell.

    `%n` (pdsh's host rank) contains no character shlex.quote escapes, so pdsh still finds it.
    """
    lines = [f"export {key}={shlex.quote(value)};" for key, value in exports.items()]
    lines.append(f"cd {shlex.quote(workdir)};")
    lines.append(shlex.join(argv))
    return " ".join(lines)


def plan_fanout(options: LaunchOptions, environ: Mapping[str, str] | None = None) -> FanOut:
    environ = dict(os.environ if environ is None else environ)
    assert options.hostfile is not None
    hosts = read_hostfile(options.hostfile)
    nodes = len(hosts) if options.nodes is None else options.nodes
    if nodes < 1:
        raise UsageError(f"--nodes {nodes}: must be 1 or more")
    if nodes > len(hosts):
        raise UsageError(f"--nodes {nodes}: the hostfile {options.hostfile} lists only {len(hosts)} hosts")
    if options.node_rank is not None:
        raise UsageError("--node-rank and --hostfile exclude each other: with a hostfile each host gets its rank")
    hosts = dict(list(hosts.items())[:nodes])
    nproc = options.nproc_per_node
    if nproc is None:
        slots = set(hosts.values())
        if len(slots) > 1:
            raise UsageError(
                f"the hosts in {options.hostfile} have different slots {sorted(slots)}; torchrun starts the "
                "same number of processes on every node: pass --nproc-per-node"
            )
        nproc = slots.pop()
    if nproc < 1:
        raise UsageError(f"--nproc-per-node {nproc}: must be 1 or more")
    if options.script is not None and not options.script.is_file():
        raise UsageError(f"--script {options.script}: no such file")
    if options.config is not None and not options.config.is_file():
        raise UsageError(f"config file {options.config} not found")
    master_addr = options.master_addr or next(iter(hosts))

    _, multinode_runner = _deepspeed_launcher()
    exports = carried_env(environ, carried_prefixes(options.device))
    argv = [sys.executable, "-u", "-m", LAUNCHER_MODULE, *node_launcher_args(options, nodes, nproc, master_addr, "%n")]
    remote = remote_command(exports, os.path.abspath("."), argv)
    command = ["pdsh", "-S", "-f", str(multinode_runner.PDSH_MAX_FAN_OUT), "-w", ",".join(hosts), remote]
    node_commands = [(host, remote.replace("%n", str(rank))) for rank, host in enumerate(hosts)]
    return FanOut(hosts, exports, command, pdsh_environment(environ, options.ssh_port), node_commands,
                  shutil.which("pdsh") is not None)


def pdsh_environment(environ: Mapping[str, str], ssh_port: int | None) -> dict[str, str]:
    """pdsh's environment: ssh as the remote command (as DeepSpeed's PDSHRunner sets it), and the port."""
    environment = {**environ, "PDSH_RCMD_TYPE": "ssh"}
    if ssh_port is not None:
        append = environment.get("PDSH_SSH_ARGS_APPEND", "")
        environment["PDSH_SSH_ARGS_APPEND"] = f"{append} -p {ssh_port}".strip()
    return environment
