"""Running a finished training command again: nothing happens, or a refusal when the flags changed.

A run records what decides its result (model, data, template, lengths, steps, epochs, learning rate and
schedule, batch sizes, seed, finetuning type and LoRA settings) as `training_config` in `llama_hw.json`.
Started again on an output directory that holds a finished model, the same command says so and exits 0
without touching a file; a command whose recorded flags differ is refused (exit 2) with the flags that
differ, and the two ways forward: `--overwrite_output_dir True` or another `--output_dir`. Flags that do
not change what is trained (logging, saving, device, patches, workers, caches) are not compared.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llama_hw.errors import UsageError
from llama_hw.models import METADATA_FILE, read_run_metadata
from llama_hw.train.config import TrainConfig

RECORD_FIELD = "training_config"
# TrainingArguments that change what is trained.
TRAINING_FIELDS = (
    "max_steps", "num_train_epochs", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "optim", "bf16", "fp16",
)
# Fields of llama_hw's own argument classes that do not: every other one is recorded.
NOT_COMPARED = {"cache_dir", "flash_attn", "trust_remote_code", "lazy_preprocess", "preprocessing_num_workers",
                "data_cache", "q_lora"}
PATH_FIELDS = ("model_name_or_path", "data_path", "eval_data_path", "lora_weight_path")


def as_recorded(name: str, value: Any) -> Any:
    """A JSON value that compares equal for the same meaning: paths absolute, tuples as lists."""
    if name in PATH_FIELDS and isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    return str(value)


def training_record(config: TrainConfig) -> dict[str, Any]:
    """The flags that decide a run's result, as `llama_hw.json` records them."""
    record: dict[str, Any] = {}
    for part in (config.model, config.data, config.finetuning):
        for item in dataclasses.fields(part):
            if item.name not in NOT_COMPARED:
                record[item.name] = as_recorded(item.name, getattr(part, item.name))
    for name in TRAINING_FIELDS:
        if name in config.training:
            record[name] = as_recorded(name, config.training[name])
    if (record.get("max_steps") or -1) > 0:
        record.pop("num_train_epochs", None)  # Trainer ignores the epochs when max_steps is given
    return record


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`--flag NOW (recorded: THEN)` for every flag both know that differs."""
    lines = []
    for name, value in current.items():
        if name in recorded and recorded[name] != value:
            lines.append(f"--{name} {shown(value)} (the finished run: {shown(recorded[name])})")
    return lines


def shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def finished_run(config: TrainConfig, *, overwrite: bool) -> str | None:
    """None when there is nothing finished to protect; the message to print when this exact run is
    finished already; UsageError when output_dir holds a finished run of other flags."""
    output_dir = Path(config.training["output_dir"])
    if overwrite or not (output_dir / METADATA_FILE).is_file():
        return None
    metadata = read_run_metadata(output_dir)
    recorded = metadata.get(RECORD_FIELD)
    fix = "pass --overwrite_output_dir True to train it again from the start, or choose another --output_dir"
    if not isinstance(recorded, dict):
        raise UsageError(f"--output_dir {output_dir} already holds a trained model ({METADATA_FILE}) that records "
                         f"no training configuration; {fix}")
    changed = differences(recorded, training_record(config))
    if changed:
        raise UsageError(f"--output_dir {output_dir} already holds a trained model ({METADATA_FILE}) of other "
                         f"flags: {'; '.join(changed)}; {fix}")
    step = metadata.get("global_step")
    at = f" at step {step}" if step is not None else ""
    return (f"llama_hw train: {output_dir} already holds this run's trained model{at} ({METADATA_FILE}); "
            "nothing to do (to train again: --overwrite_output_dir True or another --output_dir)")
