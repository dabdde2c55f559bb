"""`llama-hw chat` / `python -m llama_hw.chat`: talk to a trained model with FastChat's CLI on any backend.

FastChat's own chat loop and ChatIO run unchanged; llama_hw picks the backend, loads the model (safetensors,
LoRA adapter merged on load, dtype and device placement from the backend), applies the inference-mode
patches, and hands the model to FastChat through a reported runtime patch of its loader.

Interactive: `!!exit` (or an empty line) ends, `!!reset` starts over, `!!save FILE` / `!!load FILE` store
and restore the conversation, `!!remove` / `!!regen` drop or redo the last turn.
One-shot: `--prompt TEXT`, or text on stdin when stdin is not a terminal, prints only the reply.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import sys
import warnings
from collections.abc import Iterator

from llama_hw.backends import AUTO, PRECISIONS, Backend, select_backend
from llama_hw.errors import UsageError
from llama_hw.export.merge import check_remote_code
from llama_hw.models import METADATA_FILE, ModelSource, load_model, resolve_model_source

# FastChat's CLI default, capped at half the model's context so the prompt keeps room too.
DEFAULT_MAX_NEW_TOKENS = 512


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, like every llama_hw error
        raise UsageError(f"{message} (see `llama-hw chat --help`)")


def build_parser() -> argparse.ArgumentParser:
    from llama_hw.chat.io import STYLES

    parser = _Parser(prog="llama-hw chat", description=__doc__, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="model directory, or a LoRA adapter directory")
    parser.add_argument("--adapter", default=None, help="LoRA adapter directory to apply on load")
    parser.add_argument("--device", default=None, help=f"cpu, cuda, npu or {AUTO} (default: LLAMA_HW_DEVICE or auto)")
    parser.add_argument("--num-devices", type=int, default=1, help="spread the model over this many devices")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="weights dtype, checked against the device (default: bf16 on GPUs and NPUs that run it, "
                        "else fp16; fp32 on CPUs, also on those that run bf16 natively: a reply is generated one token "
                        "at a time, which bf16 hardly speeds up there, at a cost in accuracy)")
    parser.add_argument("--template", default=None,
                        help="FastChat conversation template; default: the one the trainer recorded in "
                        f"{METADATA_FILE}, else FastChat's match for the model name; `raw` for plain completion")
    parser.add_argument("--system-message", default=None, help="replace the template's system message")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"reply length limit (default {DEFAULT_MAX_NEW_TOKENS}, at most half the context)")
    parser.add_argument("--style", choices=STYLES, default="simple", help="FastChat's plain or rich (markdown) console")
    parser.add_argument("--prompt", default=None, help="answer this one prompt, print only the reply, exit")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    parser.add_argument("--verbose", action="store_true",
                        help="show the patch report, transformers' warnings and progress bars")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def chat_precision(backend: Backend, requested: str | None) -> str:
    """`--precision`, checked against the device, else the backend's default (on CPU always fp32)."""
    if requested is None:
        return backend.default_precision()
    supported = backend.supported_precisions()
    if requested not in supported:
        raise UsageError(
            f"--precision {requested} is not supported on {backend.device_name()} ({backend.name}); supported: "
            f"{', '.join(supported)}; pass --precision {backend.default_precision()} or leave --precision out"
        )
    return requested


def resolve_template(requested: str | None, source: ModelSource) -> tuple[str, str]:
    """The conversation template name and where it came from; UsageError if FastChat does not know it."""
    from fastchat.conversation import conv_templates
    from fastchat.model.model_adapter import get_conversation_template

    if requested:
        name, origin = requested, "--template"
    elif source.metadata.get("template"):
        name, origin = str(source.metadata["template"]), f"recorded by the training run in {METADATA_FILE}"
    else:
        name, origin = get_conversation_template(str(source.base)).name, "FastChat's match for the model name"
    if name not in conv_templates:
        close = difflib.get_close_matches(name, list(conv_templates), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(
            f"unknown conversation template {name!r} ({origin}); {hint}use `raw` for plain completion or one "
            f"of FastChat's {len(conv_templates)} templates (fastchat.conversation.conv_templates)"
        )
    return name, origin


def max_new_tokens_for(requested: int | None, context_len: int) -> int:
    if requested is None:
        return min(DEFAULT_MAX_NEW_TOKENS, context_len // 2)
    if not 0 < requested < context_len:
        raise UsageError(
            f"--max-new-tokens {requested} must be between 1 and {context_len - 1}, the model's context length "
            "less room for the prompt"
        )
    return requested


def read_prompt(args: argparse.Namespace) -> str | None:
    """The one-shot prompt: --prompt, else stdin when it is not a terminal; None for an interactive chat."""
    if args.prompt is not None:
        text = args.prompt
    elif not sys.stdin.isatty():
        text = sys.stdin.read().rstrip("\r\n")
    else:
        return None
    if not text.strip():
        raise UsageError("the prompt is empty; pass text with --prompt or on stdin")
    return text


@contextlib.contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Keep loading bars, library warnings and deprecation notices out of the conversation unless --verbose."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    if not verbose:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def banner(backend: Backend, source: ModelSource, template: str, origin: str, model, report) -> str:
    what = f"{source.base}" + (f" + adapter {source.adapter}" if source.adapter else "")
    devices = sorted({str(p.device) for p in model.parameters()})
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return (
        f"llama_hw chat: {what}\n"
        f"  on {', '.join(devices)} ({backend.name}, {dtype}); template {template} ({origin})\n"
        f"  {len(report.applied)} patches applied ({', '.join(report.applied) or 'none'}; --verbose for the report)\n"
        "  commands: !!exit, !!reset, !!save FILE, !!load FILE, !!remove, !!regen"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = select_backend(args.device).backend
    precision = chat_precision(backend, args.precision)
    source = resolve_model_source(args.model_path, args.adapter)
    check_remote_code(source.base, args.trust_remote_code, "--trust-remote-code")
    template, origin = resolve_template(args.template, source)
    prompt = read_prompt(args)

    from fastchat.serve.inference import chat_loop

    from llama_hw.chat.io import OneShotChatIO, interactive_chatio
    from llama_hw.data import load_tokenizer
    from llama_hw.patches import apply_patches
    from llama_hw.patches.fastchat_compat import context_length, serve_model

    with quiet_libraries(args.verbose):
        model = load_model(source, backend, precision=precision, num_devices=args.num_devices,
                           trust_remote_code=args.trust_remote_code)
        tokenizer = load_tokenizer(str(source.tokenizer_dir), trust_remote_code=args.trust_remote_code)
        report = apply_patches(model, backend, mode="infer")
        try:
            if args.verbose:
                print(report.render(), file=sys.stderr)
            max_new_tokens = max_new_tokens_for(args.max_new_tokens, context_length(model.config))
            if prompt is None:
                print(banner(backend, source, template, origin, model, report), file=sys.stderr)
                chatio = interactive_chatio(args.style)
                loop_output = contextlib.nullcontext()
            else:
                chatio = OneShotChatIO(prompt, sys.stdout)
                loop_output = contextlib.redirect_stdout(io.StringIO())  # only the reply reaches stdout
            with serve_model(model, tokenizer), loop_output:
                chat_loop(
                    str(source.base),
                    backend.name,
                    args.num_devices,
                    None,  # max_gpu_memory: the model is placed already
                    None,  # dtype: chosen already
                    False,  # load_8bit
                    False,  # cpu_offloading
                    template,
                    args.system_message,
                    args.temperature,
                    args.repetition_penalty,
                    max_new_tokens,
                    chatio,
                    judge_sent_end=False,
                    debug=False,
                    history=True,
                )
        finally:
            report.revert()
    return 0
