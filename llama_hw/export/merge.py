"""Merge a LoRA adapter into its base model and save the result as a plain model, atomically.

Every path is checked before anything loads (llama_hw.models' checks: adapter weights present,
config.json and safetensors readable, no pickled code; export's own: `--out` may only replace an
earlier export, see destination.py). The base loads without running its repository's code unless
`--trust_remote_code` is given; a base that cannot load without that code is refused, never prompted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llama_hw.errors import UsageError
from llama_hw.export.destination import check_out, complete, staging_dir
from llama_hw.models import ModelSource, read_run_metadata, write_run_metadata
from llama_hw.models.checks import check_checkpoint, loading_errors
from llama_hw.models.hub import resolve_model_path
from llama_hw.models.loading import adapter_base_model, apply_adapter, check_adapter_dir

DTYPES = {"auto": "auto", "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SEQ_CLS = "SEQ_CLS"


def adapter_task_type(adapter: Path) -> str | None:
    from peft import PeftConfig

    return getattr(PeftConfig.from_pretrained(str(adapter)), "task_type", None)


def needs_remote_code(model_dir: Path) -> bool:
    """True when transformers can build the model only from the Python files its config.json points to
    (exactly when transformers would otherwise ask "run the custom code? [y/N]")."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return "auto_map" in config and config.get("model_type") not in CONFIG_MAPPING


def check_remote_code(model_dir: Path, trust_remote_code: bool, trust_flag: str = "--trust_remote_code") -> None:
    """Refuse a model that needs its own code unless the user allowed it with `trust_flag`."""
    if needs_remote_code(model_dir) and not trust_remote_code:
        raise UsageError(
            f"the model {model_dir} needs its own Python code to load (config.json has auto_map and a model_type "
            f"transformers does not know); read that code, then pass {trust_flag} to run it"
        )


def load_base(base: Path, task_type: str | None, metadata: dict, dtype: str, trust_remote_code: bool):
    """The base model with the head the adapter was trained with (a classifier for SEQ_CLS adapters)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    kwargs.update({"use_safetensors": True} if any(base.glob("*.safetensors")) else {"weights_only": True})
    if task_type != SEQ_CLS:
        with loading_errors(base):
            return AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    labels = metadata.get("labels")
    if not labels:
        raise UsageError("the adapter is a classifier but its llama_hw.json records no labels; it was not "
                         "trained by llama_hw.train --task cls")
    config = AutoConfig.from_pretrained(str(base), trust_remote_code=trust_remote_code)
    id2label = {int(index): name for index, name in labels.get("id2label", {}).items()}  # JSON keys are strings
    config.update({**labels, "id2label": id2label, "pad_token_id": metadata.get("pad_token_id", config.pad_token_id)})
    with loading_errors(base):
        return AutoModelForSequenceClassification.from_pretrained(str(base), config=config, **kwargs)


def check_paths(adapter: str | os.PathLike, base: str | os.PathLike | None) -> ModelSource:
    """Base, adapter and their recorded metadata, checked with export's own flag names in the messages."""
    adapter_dir = resolve_model_path(adapter, flag="--adapter")
    check_adapter_dir(adapter_dir, flag="--adapter")
    check_checkpoint(adapter_dir)
    flag = "--base"
    if base is None:
        base = adapter_base_model(adapter_dir)
        if not base:
            raise UsageError(f"--adapter {adapter_dir} does not record its base model; pass it with --base")
        flag = f"the base model recorded by --adapter {adapter_dir},"
    base_dir = resolve_model_path(base, flag=flag)
    if not (base_dir / "config.json").is_file():
        raise UsageError(f"{flag} {base_dir} is not a model directory (no config.json); give the model the "
                         "adapter was trained on with --base")
    check_checkpoint(base_dir)
    metadata = {**read_run_metadata(base_dir), **read_run_metadata(adapter_dir)}
    return ModelSource(base=base_dir, adapter=adapter_dir, metadata=metadata)


def merge_into(model, adapter: Path):
    try:
        return apply_adapter(model, adapter, merge=True)
    except UsageError as err:
        # The shared loader names chat's flag for the base model; export's is --base.
        raise UsageError(str(err).replace("as --model-path", "with --base")) from None


def merge_adapter(adapter: str | os.PathLike, out: str | os.PathLike, *, base: str | os.PathLike | None = None,
                  dtype: str = "auto", overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """Merge `adapter` into `base` (default: the base it records) and save to `out`; returns `out`.

    With `overwrite`, `out` may be an earlier export, which is replaced only once the new model is complete.
    """
    from llama_hw.data import load_tokenizer

    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    source = check_paths(adapter, base)
    out = Path(out).expanduser()
    check_out(out, {"--adapter": source.adapter, "--base": source.base, "the working folder": Path.cwd()}, overwrite)
    check_remote_code(source.base, trust_remote_code)

    with staging_dir(out) as staging:
        model = load_base(source.base, adapter_task_type(source.adapter), source.metadata, dtype, trust_remote_code)
        merged = merge_into(model, source.adapter)
        tokenizer = load_tokenizer(str(source.tokenizer_dir), trust_remote_code=trust_remote_code)
        merged.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        base_model, merged_from = str(source.base.resolve()), str(source.adapter.resolve())
        if source.metadata.get("template"):
            fields = {key: value for key, value in source.metadata.items() if key not in ("template", "format_version")}
            fields.update(base_model=base_model, finetuning_type="full", merged_from=merged_from)
            write_run_metadata(staging, template=source.metadata["template"], **fields)
        complete(staging, out, {"base_model": base_model, "merged_from": merged_from})
    return out
