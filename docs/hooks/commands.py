"""The commands' real argument parsers, for the generated reference (docs/hooks/reference.py) and for the
check that every command written in the docs still parses (tests/test_docs.py).

Each recipe builds its parser in its own module; this file only knows where. Nothing here runs a command:
parsing stops before any model, data or device is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
from collections.abc import Iterator

# `llama-hw COMMAND` / `python -m llama_hw.COMMAND` -> the recipe module that parses its command line.
from llama_hw.cli import COMMANDS


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


@contextlib.contextmanager
def _capture_parser() -> Iterator[None]:
    """While active, the first parse of any argparse parser raises _Captured with that parser: for the
    recipes that build their parser inside `main` or `parse_args` instead of exposing it."""
    originals = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture
    argparse.ArgumentParser.parse_known_args = capture
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = originals


def recipe_module(command: str):
    if command not in COMMANDS:
        raise KeyError(f"unknown command {command!r}; llama_hw.cli.COMMANDS has {sorted(COMMANDS)}")
    return importlib.import_module(COMMANDS[command][0])


def parser_for(command: str) -> argparse.ArgumentParser:
    """The parser `llama-hw COMMAND` parses its command line with."""
    if command == "train":
        from llama_hw.train.config import parser

        return parser()
    module = recipe_module(command)
    for factory in ("build_parser", "parser"):
        if callable(getattr(module, factory, None)):
            return getattr(module, factory)()
    entry = getattr(module, "parse_args", None) or module.main
    with _capture_parser():
        try:
            entry(["--help"])
        except _Captured as captured:
            return captured.parser
    raise RuntimeError(f"{module.__name__} parsed no command line")


def train_argument_groups() -> list[tuple[str, list[str]]]:
    """(dataclass name, its flag destinations) for the trainer's HfArgumentParser, llama_hw's own first."""
    from llama_hw.train import config

    return [(cls.__name__, [f.name for f in dataclasses.fields(cls) if f.init]) for cls in config.ARGUMENT_CLASSES]


def check_command(command: str, argv: list[str]) -> None:
    """Parse `llama-hw COMMAND ARGV` exactly as the command would, without running it.

    Raises SystemExit (argparse) or llama_hw.errors.UsageError when the command line is wrong.
    """
    if command == "train":
        from llama_hw.train.config import parse_args

        parse_args(argv)
        return
    if command == "launch":
        from llama_hw.launch.recipe import parse_options

        options = parse_options(argv)
        if options.script is not None and options.script.as_posix().endswith("benchmarks/bench.py"):
            check_command("bench", options.target_args)  # that script is `python -m llama_hw.bench`
        elif options.script is None and (options.config or options.target_args):
            check_command("train", [str(options.config)] * bool(options.config) + options.target_args)
        return
    parser_for(command).parse_args(argv)
