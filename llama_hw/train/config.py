"""The command line (and YAML / JSON config files) -> one `TrainConfig`.

`python -m llama_hw.train [CONFIG.yaml|CONFIG.json] [--flag value ...]`: a config file's keys are flag
names; flags on the command line override it. Old FastChat / transformers 4 flags are translated first
(`llama_hw.train.flags`). TrainingArguments are kept as keyword arguments here and built later, once the
backend is known, because the backend decides some of them (use_cpu, ddp_backend, tf32) and
TrainingArguments starts the distributed state as soon as it is constructed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from llama_hw.data import DataArguments
from llama_hw.errors import UsageError
from llama_hw.train.arguments import FinetuningArguments, ModelArguments, RunArguments
from llama_hw.train.checks import check_values
from llama_hw.train.flags import translate

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def help_group(cls: type, title: str) -> type:
    """`cls` with the section title HfArgumentParser gives its flags in `--help`. Every class gets one:
    argparse prints ungrouped flags first, and Trainer's ~150 flags would bury llama_hw's own."""
    return type(cls.__name__, (cls,), {"_argument_group_name": title, "__doc__": cls.__doc__})


ARGUMENT_CLASSES = (
    help_group(ModelArguments, "llama_hw: model"),
    help_group(DataArguments, "llama_hw: data"),
    help_group(FinetuningArguments, "llama_hw: finetuning (full, LoRA, QLoRA)"),
    help_group(RunArguments, "llama_hw: run"),
    help_group(TrainingArguments, "transformers TrainingArguments (--log_level also sets llama_hw's messages)"),
)


@dataclass
class TrainConfig:
    model: ModelArguments
    data: DataArguments
    finetuning: FinetuningArguments
    run: RunArguments
    training: dict[str, Any]  # TrainingArguments keyword arguments, as given
    notes: list[str] = field(default_factory=list)  # translated / ignored flags, for the start banner


class Parser(HfArgumentParser):
    """HfArgumentParser that reports a bad command line as a UsageError (one line, exit code 2)."""

    def error(self, message: str):
        raise UsageError(f"{message}; see `python -m llama_hw.train --help`")


def parser() -> Parser:
    # allow_abbrev off: a typo such as --learning_rat must not silently set --learning_rate
    # argparse's generated usage line lists all ~200 flags; the groups below say the same, in order
    return Parser(ARGUMENT_CLASSES, prog="python -m llama_hw.train", allow_abbrev=False,
                  usage="python -m llama_hw.train [CONFIG.yaml|CONFIG.json] --model_name_or_path MODEL "
                        "--data_path DATA --output_dir OUT [--flag value ...]",
                  description="Fine-tune a LLaMA model with FastChat's flags (transformers 4 and LLaMA-Factory "
                              "spellings are translated). llama_hw's own flags come first, then Trainer's.")


def config_file_tokens(path: Path) -> list[str]:
    """A YAML / JSON mapping of flag names to values, as command-line tokens."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise UsageError(f"config file {path} cannot be read: {str(err).splitlines()[0]}") from err
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must map flag names to values")
    tokens: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        tokens.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            tokens += [str(item) for item in value]
        elif isinstance(value, dict):
            tokens.append(json.dumps(value))
        else:
            tokens.append(str(value))
    return tokens


def expand_config_file(argv: list[str]) -> list[str]:
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        path = Path(argv[0])
        if not path.is_file():
            raise UsageError(f"config file {argv[0]} does not exist")
        return config_file_tokens(path) + argv[1:]
    return argv


def reject_unknown(unknown: list[str], known: list[str]) -> None:
    flags = [token for token in unknown if token.startswith("--")]
    if not unknown:
        return
    if not flags:
        raise UsageError(f"unexpected argument {unknown[0]!r}; flags look like --name value")
    name = flags[0][2:].split("=", 1)[0]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    raise UsageError(f"unknown flag --{name}{hint}; see `python -m llama_hw.train --help`")


def parse_args(argv: list[str] | None) -> TrainConfig:
    """Parse a command line into a TrainConfig; UsageError on anything wrong with it."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    translation = translate(expand_config_file(tokens))
    argument_parser = parser()
    namespace, unknown = argument_parser.parse_known_args(translation.tokens)
    reject_unknown(unknown, [action.dest for action in argument_parser._actions])
    values = vars(namespace)

    def build(cls):
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})

    training = {f.name: values[f.name] for f in dataclasses.fields(TrainingArguments) if f.init and f.name in values}
    config = TrainConfig(
        model=build(ModelArguments),
        data=build(DataArguments),
        finetuning=build(FinetuningArguments),
        run=build(RunArguments),
        training=training,
        notes=list(translation.notes),
    )
    # --data_path is required by DataArguments itself (argparse says so)
    if not config.model.model_name_or_path:
        raise UsageError("--model_name_or_path is required: the directory of the model to fine-tune")
    if not config.training.get("output_dir"):
        raise UsageError("--output_dir is required: where checkpoints and the trained model go")
    config.finetuning.resolve()
    check_values(config)
    if config.model.flash_attn:
        config.notes.append("--flash_attn: llama_hw.patches picks the attention kernel for the backend "
                            "(flash-attention-2 on CUDA when installed)")
    if config.model.padding_side is None:
        config.model.padding_side = "left" if config.model.task == "cls" else "right"
    return config


def training_defaults() -> dict[str, Any]:
    """TrainingArguments' own defaults, to tell the values a user left alone from the ones they set."""
    defaults = {}
    for item in dataclasses.fields(TrainingArguments):
        if item.default is not dataclasses.MISSING:
            defaults[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            defaults[item.name] = item.default_factory()
    return defaults
