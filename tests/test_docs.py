"""The docs cannot drift from the code: every command in their code blocks parses with the command's real
parser (launch lines are also dry-run), the generated reference lists every flag, and the site's
navigation names every page.

Nothing is trained or loaded: parsing stops before any model, data or device is touched.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from llama_hw.cli import COMMANDS, module_main
from llama_hw.errors import UsageError
from conftest import REPO

sys.path.insert(0, str(REPO / "docs" / "hooks"))
import commands  # noqa: E402  (docs/hooks/commands.py)
import reference  # noqa: E402  (docs/hooks/reference.py)

DOCS = REPO / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", flags=re.S | re.M)
SEPARATORS = {"|", "||", "&&", ";", "&"}
REDIRECTS = {">", ">>", "<", "2>"}
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
# A placeholder for config files the docs name but do not ship (`train.yaml`): the flags the trainer requires.
PLACEHOLDER_CONFIG = {"model_name_or_path": "MODEL_DIR", "data_path": "data.json", "output_dir": "output/x"}


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    command: str  # a key of llama_hw.cli.COMMANDS
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: llama-hw {self.command} {shlex.join(self.argv)}"


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of every shell code block, continuation lines joined."""
    found = []
    for block in SHELL_BLOCK.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        pending, start = "", None
        for offset, line in enumerate(block.group(1).splitlines()):
            start = first + offset if start is None else start
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            found.append((start, pending + line))
            pending, start = "", None
    return found


def segments(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts, current, skip_next = [], [], False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in SEPARATORS:
            parts.append(current)
            current = []
        elif token in REDIRECTS:
            skip_next = True
        else:
            current.append(token)
    return [part for part in parts + [current] if part]


def as_llama_hw(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(command, argv) when these tokens run a llama_hw command, else None."""
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens = tokens[1:]  # VAR=value prefixes
    if tokens[:1] == ["llama-hw"]:
        rest = tokens[1:]
    elif len(tokens) > 1 and tokens[0].startswith("python") and tokens[1] == "benchmarks/bench.py":
        rest = ["bench", *tokens[2:]]
    elif "-m" in tokens and tokens.index("-m") + 1 < len(tokens) and \
            tokens[tokens.index("-m") + 1].split(".")[0] == "llama_hw":
        at = tokens.index("-m")
        module, rest = tokens[at + 1], tokens[at + 2:]
        if module != "llama_hw":
            name = module.split(".", 1)[1]
            if name not in COMMANDS:
                assert importlib.util.find_spec(module) is not None, f"`python -m {module}`: no such module"
                return None  # a helper module (llama_hw.demo.generate), not a command with flags
            rest = [name, *rest]
    else:
        return None
    if not rest or rest[0] in ("-h", "--help"):
        return None
    return rest[0], rest[1:]


def documented_commands() -> list[DocCommand]:
    found = []
    for path in [REPO / "README.md", *PAGES]:
        for number, line in shell_lines(path.read_text(encoding="utf-8")):
            for tokens in segments(line):
                parsed = as_llama_hw(tokens)
                if parsed:
                    found.append(DocCommand(f"{path.relative_to(REPO)}:{number}", parsed[0], tuple(parsed[1])))
    return found


DOC_COMMANDS = documented_commands()


def with_placeholder_config(command: str, argv: list[str], tmp_path: Path) -> list[str]:
    """A config file the docs name but the repository does not ship becomes a minimal one."""
    placeholder = tmp_path / "placeholder.yaml"
    placeholder.write_text(yaml.safe_dump(PLACEHOLDER_CONFIG))
    if command == "train" and argv and argv[0].endswith(CONFIG_SUFFIXES) and not (REPO / argv[0]).is_file():
        return [str(placeholder), *argv[1:]]
    if command == "launch":
        own = argv[: argv.index("--")] if "--" in argv else argv
        from llama_hw.launch.recipe import build_parser

        config = build_parser().parse_args(own).config
        if config is not None and not (REPO / config).is_file():
            at = argv.index(str(config))
            return [*argv[:at], str(placeholder), *argv[at + 1:]]
    return argv


def test_the_docs_have_commands_of_every_kind():
    assert {c.command for c in DOC_COMMANDS} >= {"env", "launch", "train", "data", "bench", "chat", "export"}


@pytest.mark.parametrize("doc_command", DOC_COMMANDS, ids=str)
def test_documented_command_parses(doc_command, tmp_path, monkeypatch, capsys, no_torch_npu):
    monkeypatch.chdir(REPO)
    for name in ("LLAMA_HW_DEVICE", "MASTER_ADDR", "MASTER_PORT", "SLURM_NNODES", "SLURM_NODEID",
                 "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    argv = with_placeholder_config(doc_command.command, list(doc_command.argv), tmp_path)
    try:
        commands.check_command(doc_command.command, argv)
    except (SystemExit, UsageError) as err:
        pytest.fail(f"{doc_command}\n  does not parse: {err}")
    if doc_command.command == "launch" and "--hostfile" not in argv and "--script" not in argv:
        own, sep, rest = (argv[: argv.index("--")], ["--"], argv[argv.index("--") + 1:]) if "--" in argv \
            else (argv, [], [])
        assert module_main("llama_hw.launch.recipe", ["--dry-run", *own, *sep, *rest]) == 0, \
            f"{doc_command}\n  --dry-run failed:\n{capsys.readouterr().err}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_reference_lists_every_flag(command):
    page = reference.render(command)
    parser = commands.parser_for(command)
    parsers = [parser, *reference._subparsers(parser).values()]
    for each in parsers:
        for action in each._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help") and action.help != "==SUPPRESS==":
                    assert f"`{flag}`" in page, f"reference for {command} misses {flag}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_a_generated_reference_page(command):
    page = DOCS / "reference" / f"{command}.md"
    assert page.is_file(), f"add docs/reference/{command}.md with the line <!-- flags: {command} --> (and a nav entry)"
    assert f"<!-- flags: {command} -->" in page.read_text()


def test_reference_puts_llama_hw_trainer_flags_before_transformers():
    page = reference.render("train")
    assert page.index("`--finetuning_type`") < page.index("`--learning_rate`")
    assert page.index("`--data_path`") < page.index("TrainingArguments")


# How-to pages whose flag tables describe one command; their first column must name real flags.
TABLE_PAGES = {"how-to/launch.md": "launch", "how-to/chat.md": "chat", "how-to/benchmark.md": "bench",
               "how-to/data.md": "data", "how-to/export.md": "export", "how-to/plan.md": "plan",
               "how-to/train.md": "train"}


def translated(flag: str) -> bool:
    """An old FastChat / transformers 4 trainer flag that llama_hw translates (with a note)."""
    from llama_hw.train.flags import translate

    for value in ("True", "0.1"):
        try:
            if translate([flag, value]).notes:
                return True
        except UsageError:
            continue
    return False


@pytest.mark.parametrize("page", sorted(TABLE_PAGES))
def test_flag_tables_name_real_flags(page):
    path = DOCS / page
    if not path.is_file():
        pytest.skip(f"docs/{page} does not exist")
    command = TABLE_PAGES[page]
    parser = commands.parser_for(command)
    known = {flag for each in [parser, *reference._subparsers(parser).values()]
             for action in each._actions for flag in action.option_strings}
    stale = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("| `--"):
            continue
        for flag in re.findall(r"--[a-z][a-z0-9_-]*[a-z0-9]\b(?!\*)", line.split("|")[1]):
            if flag not in known and not (command == "train" and translated(flag)):
                stale.append(f"docs/{page}:{number}: {flag}")
    assert not stale, f"flag tables name flags `llama-hw {command}` does not accept: {stale}"


def nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_nav_names_every_page_and_only_existing_ones():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    missing = [page for page in listed if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml nav names pages that do not exist: {missing}"
    unlisted = [str(p.relative_to(DOCS)) for p in PAGES if str(p.relative_to(DOCS)) not in listed]
    assert not unlisted, f"pages missing from mkdocs.yml nav (a strict build fails): {unlisted}"


def test_mkdocs_config_loads_with_the_material_theme():
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]' (CI installs it)")
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e '.[docs]'")
    from mkdocs.config import load_config

    config = load_config(str(REPO / "mkdocs.yml"))
    assert config["theme"].name == "material"
    assert config["strict"] is True
