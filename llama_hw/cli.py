"""`llama-hw COMMAND ...`: one console script for every recipe; `python -m llama_hw.COMMAND` works too."""

from __future__ import annotations

import importlib
import sys

from llama_hw.errors import UsageError, run_cli
from llama_hw.utils.imports import import_torch

# command -> (module with `main(argv)`, one-line help)
COMMANDS = {
    "env": ("llama_hw.env", "show the selected device backend, precisions, peak TFLOP/s and versions"),
    "train": ("llama_hw.train.recipe", "fine-tune a LLaMA model on conversations (FastChat flags)"),
    "launch": ("llama_hw.launch.recipe", "start training on one or many nodes through torchrun"),
    "bench": ("llama_hw.bench.recipe", "measure tokens/s/device, MFU and memory; compare runs"),
    "chat": ("llama_hw.chat.recipe", "chat with a trained model or adapter (FastChat CLI)"),
    "data": ("llama_hw.data.recipe", "inspect how conversations are rendered, tokenized and masked"),
    "export": ("llama_hw.export.recipe", "merge a LoRA adapter into its base model"),
    "plan": ("llama_hw.plan.recipe", "predict per-device memory and speed of every configuration; recommend one"),
}


def usage() -> str:
    lines = ["usage: llama-hw COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_module, text) in COMMANDS.items()]
    return "\n".join(lines)


def dispatch(argv: list[str] | None = None) -> int | None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; run `llama-hw --help` for the list")
    import_torch()  # a broken device extension breaks `import torch`: report it as a fixable error
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest)


def main(argv: list[str] | None = None) -> int:
    return run_cli(dispatch, argv)


def module_main(module_name: str, argv: list[str] | None = None) -> int:
    """Entry for `python -m llama_hw.COMMAND`: the same error handling as the console script."""

    def run(args):
        import_torch()
        return importlib.import_module(module_name).main(args)

    return run_cli(run, sys.argv[1:] if argv is None else argv)
