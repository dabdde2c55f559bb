"""`python -m llama_hw.launch [options] [CONFIG.yaml] [-- TARGET ARGS]`: torchrun, set up for the device.

One node: `--nproc-per-node` workers (default: every visible device; 1 on CPU). Several nodes: run it
on each with `--nodes N --node-rank R --master-addr HOST` (read from Slurm when inside a job), or once
with `--hostfile` to start all of them over pdsh. The workers run the trainer (`python -m
llama_hw.train ARGS`), a `--script`, or — with no target at all — the embedded demo. PyTorch's
elastic agent (torch.distributed.run) starts, watches and, with `--max-restarts`, restarts them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llama_hw.errors import UsageError
from llama_hw.launch.plan import DEFAULT_RDZV_TIMEOUT, RDZV_BACKENDS, LaunchOptions, NodePlan, plan_node


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, like every llama_hw error
        raise UsageError(f"{message} (see `python -m llama_hw.launch --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m llama_hw.launch",
        allow_abbrev=False,  # `--nproc` must not silently mean --nproc-per-node (train refuses it too)
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after `--` go to the trainer (or to --script). With no target at all the "
        "embedded demo runs. Variables you set (OMP_NUM_THREADS, HCCL_CONNECT_TIMEOUT, the "
        "visible-devices variable, MASTER_ADDR, MASTER_PORT) win over the launcher's defaults.",
    )
    parser.add_argument("config", nargs="?", type=Path, help="trainer config file (YAML or JSON)")
    parser.add_argument("--device", help="cpu, cuda, npu or auto (default: LLAMA_HW_DEVICE, else auto)")
    parser.add_argument("--nodes", type=int, help="number of nodes (default: 1, or Slurm's)")
    parser.add_argument("--nproc-per-node", type=int, help="workers per node (default: visible devices; 1 on CPU)")
    parser.add_argument("--node-rank", type=int, help="this node's rank, 0..nodes-1 (default: 0, or Slurm's)")
    parser.add_argument("--master-addr", help="address of node 0 (default: MASTER_ADDR, Slurm's first node, 127.0.0.1)")
    parser.add_argument("--master-port", type=int, help="rendezvous port on node 0 (default: MASTER_PORT or 29500)")
    parser.add_argument("--rdzv-id", help="job id shared by all nodes (default: SLURM_JOB_ID or llama_hw)")
    parser.add_argument("--rdzv-backend", default="c10d", choices=RDZV_BACKENDS,
                        help="torchrun rendezvous; c10d (default) restarts across nodes")
    parser.add_argument("--rdzv-timeout", type=int, default=DEFAULT_RDZV_TIMEOUT, metavar="SECONDS",
                        help="how long a node waits for node 0 and for the other nodes before it gives up "
                        f"(default {DEFAULT_RDZV_TIMEOUT})")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="restart the worker group up to N times when a worker dies")
    parser.add_argument("--hostfile", type=Path,
                        help="DeepSpeed-style hostfile (`host slots=N`): start every node from here over pdsh")
    parser.add_argument("--ssh-port", type=int, help="ssh port for --hostfile")
    parser.add_argument("--script", type=Path, help="run this Python script instead of the trainer")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the per-node commands and environment; start nothing (no device needed)")
    return parser


def parse_options(argv: list[str]) -> LaunchOptions:
    own, target = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)
    return LaunchOptions(
        device=args.device,
        nodes=args.nodes,
        nproc_per_node=args.nproc_per_node,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        rdzv_id=args.rdzv_id,
        rdzv_backend=args.rdzv_backend,
        rdzv_timeout=args.rdzv_timeout,
        max_restarts=args.max_restarts,
        hostfile=args.hostfile,
        ssh_port=args.ssh_port,
        script=args.script,
        config=args.config,
        target_args=target,
        dry_run=args.dry_run,
    )


def describe_plan(plan: NodePlan, dry_run: bool) -> str:
    lines = [
        f"llama_hw.launch{' dry run' if dry_run else ''}: node {plan.node_rank} of {plan.nodes}, "
        f"{plan.nproc_per_node} worker(s) on {plan.backend.name}, "
        f"{plan.nodes * plan.nproc_per_node} in all, process group backend {plan.backend.dist_backend}",
        *(f"  {note}" for note in plan.notes),
        f"  target: {plan.target.describe()}",
        "  environment set for the workers:",
        *(f"    {key}={value}" for key, value in sorted(plan.env.items())),
    ]
    if plan.kept_env:
        lines.append("  already set by you (kept):")
        lines += [f"    {key}={value}" for key, value in sorted(plan.kept_env.items())]
    lines.append("  command on this node (torchrun):")
    env_prefix = " ".join(f"{key}={shlex.quote(value)}" for key, value in sorted(plan.env.items()))
    lines.append(f"    {env_prefix} {plan.command_line()}")
    return "\n".join(lines)


def wait_for_master(plan: NodePlan) -> None:
    """On a node other than 0, wait until node 0's rendezvous port accepts connections.

    torch's own store client would retry too, but prints C++ stack frames at every attempt; this
    ends the same wait with one line once the rendezvous timeout has passed.
    """
    if plan.node_rank == 0 or plan.nodes == 1:
        return
    deadline = time.monotonic() + plan.rdzv_timeout
    print(f"llama_hw.launch: waiting up to {plan.rdzv_timeout} s for node 0 at {plan.master_addr}:{plan.master_port}",
          flush=True)
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((plan.master_addr, plan.master_port), timeout=max(0.1, min(5.0, remaining))):
                return
        except OSError as err:
            reason = err.strerror or type(err).__name__
        if remaining <= 1:
            raise UsageError(
                f"node 0 never answered at {plan.master_addr}:{plan.master_port} within --rdzv-timeout "
                f"{plan.rdzv_timeout} s (last attempt: {reason}); start the launcher with --node-rank 0 there, "
                "or fix --master-addr / --master-port"
            )
        time.sleep(1.0)


def run_torchrun(plan: NodePlan) -> int:
    """Hand the plan to torch.distributed.run in this process; return the job's exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError

    wait_for_master(plan)
    os.environ.update(plan.env)  # the elastic agent passes its environment on to every worker
    args = torchrun.get_args_parser().parse_args(plan.torchrun_args())
    try:
        torchrun.run(args)
    except ChildFailedError as err:
        print(err.format_msg(), file=sys.stderr)
        return 1
    except RendezvousTimeoutError:
        raise UsageError(
            f"not all {plan.nodes} nodes joined at {plan.master_addr}:{plan.master_port} within --rdzv-timeout "
            f"{plan.rdzv_timeout} s; start the launcher on every node with --nodes {plan.nodes}, its own --node-rank, "
            f"--master-addr {plan.master_addr} and --master-port {plan.master_port}"
        ) from None
    except RendezvousError as err:
        print(f"error: the nodes did not meet at {plan.master_addr}:{plan.master_port} "
              f"({type(err).__name__}: {err})", file=sys.stderr)
        return 1
    except SignalException as err:
        print(f"llama_hw.launch: stopped by {err.sigval.name}", file=sys.stderr)
        return 128 + int(err.sigval)
    return 0


def run_hostfile(options: LaunchOptions) -> int:
    from llama_hw.launch.multinode import plan_fanout

    fanout = plan_fanout(options)
    lines = [f"llama_hw.launch{' dry run' if options.dry_run else ''}: {len(fanout.hosts)} nodes from "
             f"{options.hostfile} over pdsh (ssh)"]
    lines += [f"  node {rank}: {host} (slots={slots})" for rank, (host, slots) in enumerate(fanout.hosts.items())]
    lines.append("  environment exported on every node:")
    lines += [f"    {key}={shlex.quote(value)}" for key, value in fanout.exports.items()] or ["    (none)"]
    lines.append("  command on this machine:")
    lines.append(f"    {shlex.join(fanout.command)}")
    lines.append("  what each node runs:")
    lines += [f"    {host}: {line}" for host, line in fanout.node_commands]
    if not fanout.runner_available:
        lines.append("  note: pdsh is not installed on this machine")
    print("\n".join(lines), flush=True)
    if options.dry_run:
        return 0
    if not fanout.runner_available:
        raise UsageError("--hostfile needs pdsh on this machine (`apt-get install pdsh`), or start the launcher "
                         "on each node with --nodes, --node-rank and --master-addr")
    return subprocess.run(fanout.command, env=fanout.environment, check=False).returncode


def run_demo(options: LaunchOptions) -> int:
    """The embedded demo: train the shipped tiny Llama from random weights on the letter puzzles, then
    score it on the held-out puzzles, before and after, and point at the model directory for chat."""
    from llama_hw import demo
    from llama_hw.demo.evaluate import evaluate_model_dir

    output_dir = Path(demo.DEMO.output_dir).resolve()
    initial = Path("<temporary directory: the random initial model>") if options.dry_run else Path(
        tempfile.mkdtemp(prefix="llama_hw_demo_initial_"))
    try:
        plan = plan_node(options, demo_args=demo.DEMO.trainer_args(initial, output_dir))
        print(describe_plan(plan, options.dry_run), flush=True)
        if options.dry_run:
            return 0
        demo.write_initial_model(initial)
        before = evaluate_model_dir(initial, plan.backend, demo.DEMO.template, demo.HELDOUT_DATA)
        print(f"demo: untrained model on the held-out puzzles: {before.summary()}", flush=True)
        code = run_torchrun(plan)
    finally:
        if not options.dry_run:
            shutil.rmtree(initial, ignore_errors=True)
    if code != 0 or not (output_dir / "config.json").is_file():
        return code  # another node holds the model, or training failed (the trainer said why)
    speed = demo.training_speed(output_dir, world_size=plan.nodes * plan.nproc_per_node)
    if speed:
        print(f"demo: {speed}")
    after = evaluate_model_dir(output_dir, plan.backend, demo.DEMO.template, demo.HELDOUT_DATA)
    print(f"demo: trained model on the held-out puzzles: {after.summary()} (untrained: {before.exact_match:.1%})")
    for question, reference, reply in after.samples:
        print(f"  {question!r} -> {reply!r} (expected {reference!r})")
    print(f"demo: talk to it with `python -m llama_hw.chat --model-path {output_dir} --temperature 0`")
    return 0


def main(argv: list[str] | None = None) -> int:
    options = parse_options(list(sys.argv[1:] if argv is None else argv))
    if options.hostfile is not None:
        return run_hostfile(options)
    if options.runs_demo:
        return run_demo(options)
    plan = plan_node(options)
    print(describe_plan(plan, options.dry_run), flush=True)
    if options.dry_run:
        return 0
    if plan.target.module is not None and importlib.util.find_spec(plan.target.module) is None:
        raise UsageError(f"module {plan.target.module} is not installed; use --script to launch a script")
    return run_torchrun(plan)
