"""`python -m llama_hw.bench` (or `llama-hw bench`): tokens/s/device, MFU, memory; compare runs; loss parity.

    bench run --model PRESET_OR_PATH --seq-len L --micro-batch B [--steps N | --ci 0.05] [--padding ...] ...
    bench compare RESULTS.jsonl... [--baseline NAME] [--png compare.png]
    bench parity A.jsonl B.jsonl [--name-a NAME] [--name-b NAME] [--tolerance 0.05] [--png parity.png]

`bench run` also runs under `python -m llama_hw.launch --script benchmarks/bench.py -- run ...` or
`torchrun -m llama_hw.bench run ...`: every rank trains, rank 0 reports per device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from llama_hw.bench.data import PADDINGS
from llama_hw.bench.parity import DEFAULT_TOLERANCE
from llama_hw.bench.presets import PRESETS, ShapeOverrides
from llama_hw.bench.session import SAMPLINGS, ZERO_STAGES, BenchSpec
from llama_hw.env import describe_origin
from llama_hw.errors import UsageError
from llama_hw.utils import distributed

DEFAULT_RESULTS = Path("bench_results.jsonl")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, like every llama_hw error
        # prog is "python -m llama_hw.bench" or, for a subcommand, "python -m llama_hw.bench run"
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def steps_value(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a number of steps or auto") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m llama_hw.bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="train W warm-up + N measured steps and measure them")
    model = run.add_argument_group("model")
    model.add_argument("--model", required=True, help=f"a preset ({', '.join(PRESETS)}; random weights) or a "
                       "Hugging Face model directory")  # fmt: skip
    for flag, what in (("layers", "decoder layers"), ("hidden", "hidden size (heads follow, head size kept)"),
                       ("heads", "attention heads"), ("kv-heads", "key/value heads"),
                       ("intermediate", "MLP width (default: Meta's rule for the hidden size)"),
                       ("vocab", "vocabulary size")):  # fmt: skip
        model.add_argument(f"--{flag}", type=int, help=f"shrink the preset: {what}")
    model.add_argument("--finetuning_type", "--finetuning-type", default="full", choices=["full", "lora"],
                       help="full fine-tuning or LoRA (rank 8 on every linear layer, FastChat's defaults)")  # fmt: skip
    shape = run.add_argument_group("batch and steps")
    shape.add_argument("--seq-len", type=int, default=2048, help="model_max_length: rows are at most this long "
                       "(synthetic samples exactly this long); default 2048")  # fmt: skip
    shape.add_argument("--micro-batch", type=int, default=1, help="rows per device and forward pass; default 1")
    shape.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step; default 1")
    shape.add_argument("--steps", type=steps_value, default=None, help="measured optimizer steps; default auto: "
                       "until the 95 %% interval of the median effective tokens/s is within --ci")  # fmt: skip
    shape.add_argument("--ci", type=float, default=0.05, help="auto steps: half width of the median's 95 %% "
                       "interval, relative to it, that ends measuring; default 0.05 (+-5 %%)")  # fmt: skip
    shape.add_argument("--min-steps", type=int, default=8, help="auto steps: measure at least this many; default 8")
    shape.add_argument("--max-steps", type=int, default=60, help="auto steps: measure at most this many; default 60")
    shape.add_argument("--time-limit", type=float, default=600.0, help="auto steps: stop measuring after this "
                       "many seconds (past --min-steps) even if not stable; default 600")  # fmt: skip
    shape.add_argument("--warmup", type=int, default=2, help="optimizer steps before measuring; default 2")
    shape.add_argument("--padding", default="dynamic", choices=PADDINGS,
                       help="max: every row padded to --seq-len (FastChat); dynamic: to the batch's longest "
                       "(default, llama_hw's pipeline); packed: rows filled with whole conversations")  # fmt: skip
    shape.add_argument("--sampling", default="sequential", choices=SAMPLINGS,
                       help="batch order; default sequential (data order: the same batches on every device)")
    data = run.add_argument_group("data (default: synthetic rows of --seq-len random tokens)")
    data.add_argument("--data_path", "--data-path", help="conversations (JSON/JSONL; ShareGPT, OpenAI or alpaca) "
                      "through llama_hw's data pipeline")  # fmt: skip
    data.add_argument("--lengths-from", help="synthetic tokens with the lengths of this data set's conversations")
    data.add_argument("--template", default="vicuna_v1.1", help="conversation template; default vicuna_v1.1")
    data.add_argument("--tokenizer", help="tokenizer directory (default: the --model directory)")
    system = run.add_argument_group("device and parallelism")
    system.add_argument("--device", help="cpu, cuda, npu or auto (default: LLAMA_HW_DEVICE, else auto)")
    system.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default: the device's fastest")
    system.add_argument("--zero", type=int, default=0, choices=ZERO_STAGES,
                        help="DeepSpeed ZeRO stage (llama_hw's zeroN preset); 0 = plain DDP (default)")
    system.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    system.add_argument("--patches", help="runtime patches: all, none, or names (default: LLAMA_HW_PATCHES, else all)")
    system.add_argument("--learning-rate", type=float, default=2e-5, help="AdamW learning rate; default 2e-5")
    system.add_argument("--seed", type=int, default=0, help="weights, synthetic data and sampling seed; default 0")
    out = run.add_argument_group("output")
    out.add_argument("--name", help="run name in results and tables (default: model, padding, precision, device)")
    out.add_argument("--output", type=Path, default=DEFAULT_RESULTS,
                     help=f"results file, one JSON line per run appended; default {DEFAULT_RESULTS}")
    out.add_argument("--json", action="store_true", help="quiet: no progress bar; print only the run's JSON line")

    compare = commands.add_parser("compare", help="a markdown table and a bar chart of runs")
    compare.add_argument("files", nargs="+", type=Path, help="results files of `bench run`")
    compare.add_argument("--baseline", help="run name the ratios are relative to (default: the first run)")
    compare.add_argument("--png", type=Path, help="also write a bar chart to this PNG file")

    parity = commands.add_parser("parity", help="overlay two runs' loss curves and judge their agreement")
    parity.add_argument("a", type=Path, help="results file of the reference run")
    parity.add_argument("b", type=Path, help="results file of the run to check")
    parity.add_argument("--name-a", help="run name in A (default: its last run)")
    parity.add_argument("--name-b", help="run name in B (default: its last run)")
    parity.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest per-step loss deviation that passes, as a fraction of the reference run's "
                        f"loss drop; default {DEFAULT_TOLERANCE}")  # fmt: skip
    parity.add_argument("--allow-differences", default="", help="configuration fields that may differ beyond "
                        "device, precision, parallelism and patches, comma-separated (e.g. seed); the verdict "
                        "names them")  # fmt: skip
    parity.add_argument("--png", type=Path, help="also write the loss plot to this PNG file")
    parity.add_argument("--rtol", type=float, help=argparse.SUPPRESS)  # refused with the replacement
    return parser


def spec_from(args: argparse.Namespace) -> BenchSpec:
    overrides = ShapeOverrides(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                               intermediate=args.intermediate, vocab=args.vocab)  # fmt: skip
    return BenchSpec(
        model=args.model, overrides=overrides, seq_len=args.seq_len, micro_batch=args.micro_batch,
        grad_accum=args.grad_accum, steps=args.steps, warmup=args.warmup, padding=args.padding,
        min_steps=args.min_steps, max_steps=args.max_steps, ci_bound=args.ci, time_limit_s=args.time_limit,
        data_path=args.data_path, template=args.template, tokenizer=args.tokenizer, lengths_from=args.lengths_from,
        finetuning_type=args.finetuning_type, zero=args.zero, precision=args.precision, device=args.device,
        patches=args.patches, gradient_checkpointing=args.gradient_checkpointing, sampling=args.sampling,
        learning_rate=args.learning_rate, seed=args.seed, name=args.name,
    )  # fmt: skip


def banner(session) -> str:
    spec = session.spec
    return "\n".join([
        f"llama_hw bench: {session.name}",
        f"  model: {spec.model} ({spec.finetuning_type}): {session.parameters.describe()}",
        f"  data: {session.data.description}; {spec.padding} padding, micro batch {spec.micro_batch} x "
        f"{spec.grad_accum} accumulation, {spec.warmup} warm-up + " + (
            f"{spec.steps} measured steps" if spec.steps else f"{spec.min_steps}..{spec.max_steps} measured steps "
            f"(until the median is known to +-{100 * spec.ci_bound:g} %)"),
        f"  attention work counted as {session.layout.describe()}",
        f"  peak: {describe_origin(session.peak)}" if session.peak else "  peak: unknown",
        f"  {session.parallelism.describe()}, {session.precision}",
        *(f"  note: {note}" for note in session.notes),
        session.patch_report.render(),
    ])  # fmt: skip


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout (Python or C, e.g. DeepSpeed's import banner) to stderr, so
    that with --json the run's JSON is the only line on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def check_writable(path: Path) -> None:
    """Refuse before measuring when the results file cannot be appended to (a run can take many minutes).

    Tried for real rather than with os.access, which says yes to root on a read-only file system."""
    if path.is_dir():
        raise UsageError(f"--output {path} is a directory; give a file, e.g. --output {path / DEFAULT_RESULTS}")
    try:
        if path.exists():
            with open(path, "a", encoding="utf-8"):
                pass
            return
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise UsageError(f"--output {path}: {folder} is not a directory")
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".llama_hw_bench_", delete=True)
        probe.close()
    except OSError as err:
        raise UsageError(f"--output {path} is not writable ({err.strerror}); choose another --output") from None


def run(args: argparse.Namespace) -> int:
    from llama_hw.bench.results import append_jsonl, build_record, summary
    from llama_hw.bench.session import build_bench_session

    quiet = args.json
    check_writable(args.output)  # on every rank: all of them stop with the same line
    with stdout_to_stderr() if quiet else contextlib.nullcontext():
        session = build_bench_session(spec_from(args), progress=not quiet and sys.stderr.isatty())
        main_rank = distributed.is_main_process()
        if main_rank and not quiet:
            print(banner(session), flush=True)
        measurement = session.train()
        if not main_rank:
            return 0
        record = build_record(session, measurement)
    try:
        append_jsonl(args.output, record)
    except OSError as err:
        print(json.dumps(record) if quiet else summary(record), flush=True)  # the measurement is not lost
        raise UsageError(f"could not append the result to {args.output} ({err.strerror}); it is printed above: "
                         "save it, or rerun with another --output") from None  # fmt: skip
    if quiet:
        print(json.dumps(record), flush=True)
    else:
        print(summary(record))
        print(f"  appended to {args.output}", flush=True)
    return 0


def compare(args: argparse.Namespace) -> int:
    from llama_hw.bench.compare import bar_chart, markdown_table, pick_baseline, rows_by_config
    from llama_hw.bench.results import read_jsonl

    records = [record for path in args.files for record in read_jsonl(path)]
    if not records:
        raise UsageError(f"no runs in {', '.join(map(str, args.files))}")
    rows, notes = rows_by_config(records)
    baseline = pick_baseline(rows, args.baseline)
    print(markdown_table(rows, baseline))
    for note in notes:
        print(f"\nnote: {note}")
    if args.png:
        bar_chart(rows, baseline, args.png)
        print(f"\nchart: {args.png}")
    return 0


def parity(args: argparse.Namespace) -> int:
    from llama_hw.bench.parity import compare_losses, loss_plot, pick_run
    from llama_hw.bench.results import read_jsonl

    if args.rtol is not None:
        raise UsageError("--rtol (deviation relative to the loss) is replaced by --tolerance, a fraction of the "
                         "reference run's loss drop (default 0.05); see docs/explanation/token-accounting.md")
    a = pick_run(read_jsonl(args.a), args.name_a, args.a)
    b = pick_run(read_jsonl(args.b), args.name_b, args.b)
    allowed = {field.strip() for field in args.allow_differences.split(",") if field.strip()}
    result = compare_losses(a, b, args.tolerance, allowed)
    print(result.render())
    if args.png:
        loss_plot(a, b, result, args.png)
        print(f"plot: {args.png}")
    return 0 if result.passed else 1


def closed_pipe_safe(command):
    """`bench compare ... | head`: a reader that stops early is not an error (and no traceback)."""

    def run(args: argparse.Namespace) -> int:
        try:
            code = command(args)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            # Python's own advice: point stdout at devnull so the interpreter's final flush cannot fail again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0

    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command != "run":
        return closed_pipe_safe({"compare": compare, "parity": parity}[args.command])(args)
    try:
        code = run(args)
    except BaseException:
        distributed.end_process_group(clean=False)  # another rank may be gone: no barrier
        raise
    distributed.end_process_group(clean=True)
    return code
