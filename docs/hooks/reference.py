"""MkDocs hook: the reference pages' flag tables, rendered at build time from the commands' real parsers.

A page that contains the line `<!-- flags: COMMAND -->` gets, in its place, one table per parser (and per
subcommand) with every flag, its default and its help text, read from the parser `llama-hw COMMAND` uses
(docs/hooks/commands.py knows where each recipe builds it). A flag added, renamed or removed in the code
therefore changes the docs on the next build; nothing is copied by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import commands  # noqa: E402  (docs/hooks/commands.py, beside this file)

MARKER = re.compile(r"^<!-- flags: ([a-z]+) -->$", flags=re.M)
DEFAULT_SUFFIX = re.compile(r"\s*\(default: [^()]*\)\s*$")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._HelpAction):
        return ""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if action.default is False else "on"
    return f"`{_cell(action.default)}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    text = DEFAULT_SUFFIX.sub("", text)  # HfArgumentParser appends it; the table has a default column
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text = f"{text} (one of: {', '.join(str(c) for c in action.choices)})".strip()
    return _cell(text)


def _name(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}` (positional)"
    return ", ".join(f"`{flag}`" for flag in action.option_strings)


def flag_table(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> str:
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        rows.append(f"| {_name(action)} | {_default(action)} | {_help(parser, action)} |")
    return "\n".join(rows)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render_argparse(command: str, parser: argparse.ArgumentParser) -> str:
    parts = [f"```\n{parser.format_usage().strip()}\n```"]
    own = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    if any(not isinstance(a, argparse._SubParsersAction) for a in own):
        parts.append(flag_table(parser, own))
    for name, sub in _subparsers(parser).items():
        parts += [f"## `llama-hw {command} {name}`", f"```\n{sub.format_usage().strip()}\n```",
                  flag_table(sub, sub._actions)]
    return "\n\n".join(parts)


def render_train() -> str:
    parser = commands.parser_for("train")
    by_dest: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:  # a boolean that defaults to True has two: --x and --no_x
        by_dest.setdefault(action.dest, []).append(action)
    parts = [f"```\n{parser.format_usage().strip()}\n```" if len(parser.format_usage()) < 400 else
             "```\npython -m llama_hw.train [CONFIG.yaml|CONFIG.json] [--flag value ...]\n```"]
    for group, dests in commands.train_argument_groups():
        actions = [action for d in dests for action in by_dest.get(d, [])]
        title = ("transformers' TrainingArguments (every flag of transformers' Trainer)"
                 if group == "TrainingArguments" else group)
        parts += [f"## {title}", f"{len(actions)} flags.", flag_table(parser, actions)]
    return "\n\n".join(parts)


def render(command: str) -> str:
    if command == "train":
        return render_train()
    return render_argparse(command, commands.parser_for(command))


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda match: render(match.group(1)), markdown)
