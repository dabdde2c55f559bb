"""`python -m llama_hw.plan` (or `llama-hw plan`): will a job fit, and how fast, before a GPU-hour is spent.

    plan --model PRESET_OR_PATH [--finetuning_type full|lora|qlora] [--precision bf16|fp16|fp32]
         [--seq-len L | --data_path F --template T --tokenizer P] [--devices N] [--nodes K]
         [--device-memory GIB | --device-product NAME] [--calibrate RESULTS.jsonl] [--tokens-per-epoch N] [--json]

Every configuration (DDP, ZeRO-1/2/3 with and without offload, FSDP2; gradient checkpointing; micro batch;
the chunked head; packing) gets its per-device memory, broken down, whether it fits with 10 % headroom, and
its predicted step time and tokens/s/device; the fastest that fits is recommended with its flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from llama_hw.bench.presets import PRESETS
from llama_hw.errors import UsageError
from llama_hw.plan.devices import calibrated_mfu, resolve_device
from llama_hw.plan.job import FINETUNING_TYPES, LINEAR_MODULES, Job, model_shape
from llama_hw.plan.rows import full_rows, profile_from_data
from llama_hw.plan.search import HEADROOM, Estimate, Plan, make_plan

GIB = 1024**3
PARTS = ("parameters", "gradients", "optimizer_states", "activations", "logits_loss", "communication_buckets",
         "allocator_reserve")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see `python -m llama_hw.plan --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m llama_hw.plan", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    model = parser.add_argument_group("model and method")
    model.add_argument("--model", required=True, help=f"a preset ({', '.join(PRESETS)}) or a model directory "
                       "(its config.json only is read)")  # fmt: skip
    model.add_argument("--finetuning_type", "--finetuning-type", default="full", choices=FINETUNING_TYPES)
    model.add_argument("--lora_r", "--lora-r", type=int, default=8, help="LoRA rank; default 8")
    model.add_argument("--lora_target", "--lora-target", default="all",
                       help=f"adapted modules, comma separated, or all ({','.join(LINEAR_MODULES)})")  # fmt: skip
    model.add_argument("--lora_dropout", "--lora-dropout", type=float, default=0.05)
    model.add_argument("--precision", choices=("bf16", "fp16", "fp32"),
                       help="default: the device's fastest (bf16, else fp16, else fp32)")  # fmt: skip
    rows = parser.add_argument_group("rows (synthetic full rows, or a real data set)")
    rows.add_argument("--seq-len", "--model_max_length", type=int, default=2048, dest="seq_len",
                      help="row length (model_max_length); default 2048")  # fmt: skip
    rows.add_argument("--data_path", "--data-path", help="a training data set: its real lengths, padding and packing")
    rows.add_argument("--template", help="conversation template for --data_path (default: the trainer's)")
    rows.add_argument("--tokenizer", help="tokenizer directory for --data_path")
    rows.add_argument("--tokens-per-epoch", type=int, help="tokens in one epoch (default: the data set's)")
    devices = parser.add_argument_group("devices")
    devices.add_argument("--devices", type=int, help="devices in all (default: this node's visible devices, or 1)")
    devices.add_argument("--nodes", type=int, default=1)
    devices.add_argument("--device-memory", type=float, help="memory of one device in GiB")
    devices.add_argument("--device-product", help="910A, 910B1-4, 910_93, A100-40GB, A100-80GB, H100, H200, L40S, ...")
    devices.add_argument("--host-memory", type=float, help="RAM of one node in GiB, for offloaded optimizer states "
                         "and parameters (default: this machine's)")  # fmt: skip
    devices.add_argument("--device", help="the backend to plan for when no product is given (default: auto)")
    devices.add_argument("--calibrate", help="bench results (JSON lines): use their median MFU instead of the "
                         "product's assumption")  # fmt: skip
    devices.add_argument("--gradient_accumulation_steps", "--grad-accum", type=int, default=1)
    devices.add_argument("--max-micro-batch", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def build_plan(args: argparse.Namespace) -> Plan:
    if bool(args.data_path) != bool(args.tokenizer):
        raise UsageError("--data_path needs --tokenizer (and --tokenizer needs --data_path)")
    backend = None
    if not args.device_product:
        from llama_hw.backends import select_backend

        backend = select_backend(args.device).backend
    precision = args.precision or _default_precision(args.device_product, backend)
    targets = LINEAR_MODULES if args.lora_target == "all" else tuple(
        name.strip() for name in args.lora_target.split(",") if name.strip())  # fmt: skip
    world = args.devices or (backend.device_count() if backend is not None else 1) * args.nodes
    job = Job(model_shape(args.model), args.finetuning_type, args.lora_r, targets, args.lora_dropout, precision,
              args.seq_len, world, args.nodes, args.gradient_accumulation_steps,
              _backend_class(args.device_product, backend).dropout_mask_bytes)  # fmt: skip
    mfu = None
    notes = []
    if args.calibrate:
        mfu, count = calibrated_mfu(args.calibrate, precision)
        notes.append(f"MFU {mfu:.1%}: median of {count} bench record(s) in {args.calibrate}")
    device = resolve_device(product=args.device_product, memory_gib=args.device_memory, precision=precision,
                            backend=backend, mfu=mfu)  # fmt: skip
    device = dataclasses.replace(device, host_memory_bytes=host_memory_bytes(args.host_memory))
    tokens_per_epoch = args.tokens_per_epoch
    if args.data_path:
        profile = profile_from_data(args.data_path, args.template, args.tokenizer, args.seq_len)
        rows_for = {packing: (lambda micro, packing=packing: profile.rows(packing, micro)) for packing in (False, True)}
        tokens_per_epoch = tokens_per_epoch or profile.tokens
    else:
        rows_for = {False: lambda micro: full_rows(args.seq_len)}
    plan = make_plan(job, device, rows_for, max_micro_batch=args.max_micro_batch, tokens_per_epoch=tokens_per_epoch)
    plan.notes[:0] = notes
    return plan


def host_memory_bytes(gib: float | None) -> int:
    if gib is not None:
        if gib <= 0:
            raise UsageError(f"--host-memory must be a positive number of GiB, got {gib:g}")
        return int(gib * GIB)
    import psutil

    return psutil.virtual_memory().total


def _backend_class(product_name: str | None, backend):
    from llama_hw.backends import backend_classes
    from llama_hw.backends.products import find_product

    return backend_classes()[find_product(product_name).backend] if product_name else type(backend)


def _default_precision(product_name: str | None, backend) -> str:
    if product_name:
        from llama_hw.backends.products import find_product

        precisions = find_product(product_name).precisions
        return next(p for p in ("bf16", "fp16", "fp32") if p in precisions)
    return backend.default_precision()


def plan_dict(plan: Plan) -> dict:
    recommended = plan.recommended
    job = plan.job
    configurations = [e.to_dict(job, plan.tokens_per_epoch) for e in plan.estimates]
    for index, (estimate, record) in enumerate(zip(plan.estimates, configurations)):
        record["id"] = index
    return {
        "model": {"hidden_size": job.shape.hidden_size, "layers": job.shape.num_hidden_layers,
                  "vocab_size": job.shape.vocab_size, "parameters": job.parameters().total,
                  "trainable_parameters": job.parameters().trainable},  # fmt: skip
        "finetuning_type": job.finetuning_type,
        "precision": job.precision,
        "seq_len": job.seq_len,
        "devices": job.world_size,
        "nodes": job.nodes,
        "device": {"name": plan.device.name, "memory_bytes": plan.device.memory_bytes, "source": plan.device.source,
                   "peak_tflops": plan.device.rate.peak_tflops, "mfu": plan.device.rate.mfu,
                   "host_memory_bytes": plan.device.host_memory_bytes},  # fmt: skip
        "headroom": HEADROOM,
        "tokens_per_epoch": plan.tokens_per_epoch,
        "configurations": configurations,
        "recommended": plan.estimates.index(recommended) if recommended is not None else None,
        "recommended_flags": recommended.config.flags() if recommended is not None else None,
        "notes": plan.notes,
    }


def _gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def render(plan: Plan) -> str:
    from rich.console import Console
    from rich.table import Table

    job, device = plan.job, plan.device
    recommended = plan.recommended
    counts = job.parameters()
    title = (f"{job.finetuning_type} fine-tuning, {counts.total / 1e9:.2f}B parameters "
             f"({counts.trainable / 1e6:,.1f}M trainable), {job.precision}, rows of {job.seq_len}, {job.world_size} x "
             f"{device.name} ({_gib(device.memory_bytes)} GiB, {device.source}; MFU {device.rate.mfu:.0%} of "
             f"{device.rate.peak_tflops:g} TFLOP/s)")  # fmt: skip
    table = Table(title=title, title_justify="left")
    for column in ("", "engine", "offload", "ckpt", "mb", "head", "pack", "params", "grads", "optim", "activ",
                   "logits", "bufs", "reserve", "total GiB", "host", "fits", "step", "tok/s/dev"):  # fmt: skip
        table.add_column(column, justify="right" if column not in ("", "engine", "offload") else "left")
    if plan.tokens_per_epoch:
        table.add_column("epoch", justify="right")
    for estimate in plan.best_per_choice():
        table.add_row(*_row(plan, estimate, estimate is recommended))
    console = Console(file=None, width=200, force_terminal=sys.stdout.isatty(), color_system=None)
    with console.capture() as capture:
        console.print(table)
    lines = [capture.get().rstrip()]
    if recommended is not None:
        lines.append("recommended (fastest that fits with %d %% headroom): python -m llama_hw.launch -- %s"
                     % (HEADROOM * 100, " ".join(_quote(flag) for flag in recommended.config.flags())))
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def _row(plan: Plan, estimate: Estimate, recommended: bool) -> list[str]:
    c, m, s = estimate.config, estimate.memory.to_dict(), estimate.speed
    fits = "yes" if estimate.fits else ("tight" if estimate.tight else "no")
    row = ["*" if recommended else "", c.engine, c.offload, "on" if c.gradient_checkpointing else "off",
           str(c.micro_batch), "chunked" if c.chunked_head else "stock", "on" if c.packing else "off",
           *(_gib(m[part]) for part in PARTS), _gib(m["total"]), _gib(m["host_offload"]), fits, _duration(s.step_time_s),
           f"{s.tokens_per_s_per_device:,.0f}"]  # fmt: skip
    if plan.tokens_per_epoch:
        row.append(_duration(plan.tokens_per_epoch / (s.tokens_per_s_per_device * plan.job.world_size)))
    return row


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = build_plan(args)
    if args.json:
        print(json.dumps(plan_dict(plan), indent=1))
    else:
        print(render(plan))
    return 0 if plan.recommended is not None else 1
