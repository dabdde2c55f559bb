"""Checks of the command line's values and of the output directory, made before anything loads.

Everything here runs in well under a second, so a typo costs the user no model loading: a negative
learning rate, an empty batch, a read-only output directory or a LoRA target the model does not have
ends with one line naming the flag and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from llama_hw.errors import UsageError

if TYPE_CHECKING:
    from llama_hw.train.config import TrainConfig

# flag -> smallest value that makes sense, for the training flags argparse only knows as numbers
AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")


def check_values(config: TrainConfig) -> None:
    """Numbers that parse but cannot train."""
    training = config.training
    learning_rate = training.get("learning_rate")
    if learning_rate is not None and learning_rate < 0:
        raise UsageError(f"--learning_rate must not be negative, got {learning_rate:g}; "
                         "FastChat's recipes use 2e-5 for full fine-tuning, LoRA runs about 1e-4 to 2e-4")
    for name in AT_LEAST_ONE:
        value = training.get(name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
    length = config.model.model_max_length
    if length is None or length < 1:
        raise UsageError(f"--model_max_length must be a positive number of tokens, got {length} "
                         "(FastChat uses 512 or 2048)")


def nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def check_output_dir_writable(output_dir: Path) -> None:
    """The output directory (or the folder it will be created in) takes files."""
    existing = nearest_existing(output_dir.absolute())
    if existing != output_dir.absolute() and existing.is_file():
        raise UsageError(f"--output_dir {output_dir}: {existing} is a file, not a folder; "
                         "give --output_dir a folder path")
    if existing.is_file():
        raise UsageError(f"--output_dir {output_dir} is a file; give a folder (a new one is created)")
    # os.access answers for the real user and reports a read-only file system (EROFS) even to root.
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == output_dir.absolute() else f" ({existing}, where it would be created)"
        raise UsageError(f"--output_dir {output_dir} is not writable{where}; choose a folder you can write to "
                         "or fix its permissions")


def lora_target_names(model_dir: Path, task: str, trust_remote_code: bool) -> tuple[list[str], list[str]]:
    """(linear, other): the names (last part) of the modules peft can put a LoRA adapter on, in model order.

    The model is built on the meta device from its config.json: no weights are read, no memory is used.
    """
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.pytorch_utils import Conv1D

    model_config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    model_class = AutoModelForSequenceClassification if task == "cls" else AutoModelForCausalLM
    with init_empty_weights():
        model = model_class.from_config(model_config, trust_remote_code=trust_remote_code)
    linear: dict[str, None] = {}  # dicts keep the model's order
    other: dict[str, None] = {}
    for qualified, module in model.named_modules():
        name = qualified.rsplit(".", 1)[-1]
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            linear[name] = None
        elif isinstance(module, (torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)):
            other[name] = None
    return list(linear), list(other)


def check_lora_targets(config: TrainConfig, model_dir: Path) -> None:
    """Every `--lora_target` name is a module of this model (peft matches a name by its last parts)."""
    from llama_hw.train.arguments import ALL_LINEAR

    targets = config.finetuning.lora_target or []
    if not config.finetuning.uses_lora or config.finetuning.lora_weight_path or ALL_LINEAR in targets:
        return
    try:
        linear, other = lora_target_names(model_dir, config.model.task, config.model.trust_remote_code)
    except (OSError, ValueError, KeyError):
        return  # an unreadable config.json is reported by the model loader, with its own message
    known = set(linear) | set(other)
    for target in targets:
        if target.rsplit(".", 1)[-1] not in known:
            raise UsageError(f"--lora_target {target}: the model has no module of that name; its linear modules "
                             f"are {', '.join(linear)} (or use --lora_target all)")
