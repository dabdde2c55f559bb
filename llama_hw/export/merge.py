"""Merge a LoRA adapter into its base model and save the result as a plain model, atomically.

The merged model is written to a hidden sibling directory and renamed to `out` in one step, so `out`
either does not exist or holds the whole model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from llama_hw.errors import UsageError
from llama_hw.models import resolve_model_source, write_run_metadata
from llama_hw.models.loading import adapter_base_model, apply_adapter, is_adapter_dir

DTYPES = {"auto": "auto", "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SEQ_CLS = "SEQ_CLS"


def adapter_task_type(adapter: Path) -> str | None:
    from peft import PeftConfig

    return getattr(PeftConfig.from_pretrained(str(adapter)), "task_type", None)


def load_base(base: Path, task_type: str | None, metadata: dict, dtype: str):
    """The base model with the head the adapter was trained with (a classifier for SEQ_CLS adapters)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = {"dtype": DTYPES[dtype]}
    kwargs.update({"use_safetensors": True} if any(base.glob("*.safetensors")) else {"weights_only": True})
    if task_type != SEQ_CLS:
        return AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    labels = metadata.get("labels")
    if not labels:
        raise UsageError("the adapter is a classifier but its llama_hw.json records no labels; it was not "
                         "trained by llama_hw.train --task cls")
    config = AutoConfig.from_pretrained(str(base))
    id2label = {int(index): name for index, name in labels.get("id2label", {}).items()}  # JSON keys are strings
    config.update({**labels, "id2label": id2label, "pad_token_id": metadata.get("pad_token_id", config.pad_token_id)})
    return AutoModelForSequenceClassification.from_pretrained(str(base), config=config, **kwargs)


def check_paths(adapter: str | os.PathLike, base: str | os.PathLike | None) -> tuple[Path, Path]:
    """(base, adapter) directories, checked with export's own flag names in the messages."""
    adapter_dir = Path(adapter).expanduser()
    if not is_adapter_dir(adapter_dir):
        what = "does not exist" if not adapter_dir.exists() else "has no adapter_config.json"
        raise UsageError(f"--adapter {adapter_dir} {what}; give the directory a LoRA training run saved")
    if base is None:
        base = adapter_base_model(adapter_dir)
        if not base:
            raise UsageError(f"--adapter {adapter_dir} does not record its base model; pass it with --base")
    base_dir = Path(base).expanduser()
    if not (base_dir / "config.json").is_file():
        raise UsageError(f"--base {base_dir} is not a model directory (no config.json); give the model the "
                         "adapter was trained on")
    return base_dir, adapter_dir


def merge_adapter(adapter: str | os.PathLike, out: str | os.PathLike, *, base: str | os.PathLike | None = None,
                  dtype: str = "auto", overwrite: bool = False) -> Path:
    """Merge `adapter` into `base` (default: the base it records) and save to `out`; returns `out`."""
    from llama_hw.data import load_tokenizer

    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} already exists; choose a new directory or pass --overwrite")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    source = resolve_model_source(*check_paths(adapter, base))
    model = load_base(source.base, adapter_task_type(source.adapter), source.metadata, dtype)
    merged = apply_adapter(model, source.adapter, merge=True)
    tokenizer = load_tokenizer(str(source.tokenizer_dir))

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        merged.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        if source.metadata.get("template"):
            fields = {key: value for key, value in source.metadata.items() if key not in ("template", "format_version")}
            fields.update(base_model=str(source.base.resolve()), finetuning_type="full",
                          merged_from=str(source.adapter.resolve()))
            write_run_metadata(staging, template=source.metadata["template"], **fields)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
