"""Load the model to fine-tune: the right head for the task, the right dtype for the finetuning type.

- Full fine-tuning loads fp32 weights: they are the master copy that mixed precision (autocast) and
  DeepSpeed's bf16/fp16 modes expect. transformers 5 would otherwise load a bf16 checkpoint as bf16 and
  train it in pure bf16.
- LoRA keeps the frozen base in the compute dtype (fp16/bf16 when enabled) and peft keeps the adapters
  in fp32; QLoRA loads the base as 4-bit NF4 through bitsandbytes.
- `model_max_length` beyond the model's context stretches RoPE linearly, as FastChat's train.py does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from llama_hw.backends import Backend
from llama_hw.errors import UsageError
from llama_hw.models.checks import check_checkpoint, loading_errors
from llama_hw.models.hub import resolve_model_path
from llama_hw.train.arguments import ModelArguments
from llama_hw.utils.imports import is_bitsandbytes_available, package_version

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def check_model_dir(model_name_or_path: str | None, cache_dir: str | None = None) -> Path:
    """The model directory (a Hub id `org/name` resolved to its snapshot in the Hugging Face cache
    `cache_dir`), or a UsageError saying what is missing (before anything heavy happens)."""
    if not model_name_or_path:
        raise UsageError("--model_name_or_path is required: the directory of a Hugging Face model or a Hub id")
    path = resolve_model_path(model_name_or_path, flag="--model_name_or_path", cache_dir=cache_dir)
    if not (path / "config.json").is_file():
        raise UsageError(f"--model_name_or_path {path} has no config.json; it is not a Hugging Face model directory")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise UsageError(
            f"--model_name_or_path {path} has no weights (no *.safetensors or pytorch_model*.bin); "
            "download or convert the checkpoint into it"
        )
    check_checkpoint(path)
    return path


def check_qlora_environment(backend: Backend) -> None:
    """QLoRA's 4-bit weights come from bitsandbytes, which runs on the devices it lists (NVIDIA GPUs)."""
    if not is_bitsandbytes_available():
        raise UsageError(
            "--finetuning_type qlora needs bitsandbytes for its 4-bit weights, and it is not installed "
            "(it runs on NVIDIA GPUs: `pip install bitsandbytes`); on this device use --finetuning_type lora"
        )
    import bitsandbytes

    supported = set(getattr(bitsandbytes, "supported_torch_devices", ()))
    if backend.torch_device_type not in supported:
        raise UsageError(
            f"--finetuning_type qlora: bitsandbytes {package_version('bitsandbytes')} does not run on "
            f"{backend.name} devices (it supports: {', '.join(sorted(supported)) or 'none'}); "
            "use --finetuning_type lora"
        )


def compute_dtype(fp16: bool, bf16: bool) -> torch.dtype:
    return torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32


def rope_scaling_factor(model_max_length: int, max_position_embeddings: int | None) -> float | None:
    """FastChat's rule: a context longer than the model's gets linear RoPE scaling by the rounded-up ratio."""
    if not max_position_embeddings or model_max_length <= max_position_embeddings:
        return None
    return float(math.ceil(model_max_length / max_position_embeddings))


def load_config(args: ModelArguments, path: Path):
    from transformers import AutoConfig

    check_checkpoint(path)  # bench reaches here without check_model_dir
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=args.trust_remote_code, cache_dir=args.cache_dir)
    factor = rope_scaling_factor(args.model_max_length, getattr(config, "max_position_embeddings", None))
    if factor is not None:
        rope = dict(getattr(config, "rope_parameters", None) or {})
        rope.update(rope_type="linear", factor=factor)
        config.rope_parameters = rope
    config.use_cache = False  # the KV cache only costs memory while training
    return config


def load_training_model(
    args: ModelArguments,
    path: Path,
    *,
    finetuning_type: str,
    dtype: torch.dtype,
    backend: Backend,
    local_rank: int,
    labels: dict[str, Any] | None = None,
    distributed_config=None,
    pad_token_id: int | None = None,
):
    """The model for `args.task`: a causal LM for sft, a sequence classifier for cls.

    labels (cls): `num_labels`, `id2label`, `label2id`, `problem_type` for the classification head.
    distributed_config: transformers' DistributedConfig, to shard the model with FSDP2 while it loads.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    config = load_config(args, path)
    kwargs: dict[str, Any] = {
        "config": config,
        "trust_remote_code": args.trust_remote_code,
        "cache_dir": args.cache_dir,
        "dtype": torch.float32 if finetuning_type == "full" else dtype,
    }
    kwargs.update({"use_safetensors": True} if any(path.glob("*.safetensors")) else {"weights_only": True})
    if finetuning_type == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": backend.device(local_rank)}
    if distributed_config is not None:
        kwargs["distributed_config"] = distributed_config
    if args.task == "cls":
        config.update({**(labels or {}), "pad_token_id": pad_token_id})
        model_class = AutoModelForSequenceClassification
    else:
        model_class = AutoModelForCausalLM
    try:
        with loading_errors(path):
            model = model_class.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--model_name_or_path {path} cannot be loaded: {first_line}") from err
    record_pad_token(model, pad_token_id)
    return model


def record_pad_token(model, pad_token_id: int | None) -> None:
    """Write the tokenizer's pad id into the model's config and generation config.

    The pad token is load_tokenizer's choice (unk, as FastChat does, when the tokenizer has none), so the
    configs do not know it; Trainer would then align them itself and warn about it on every rank. Set after
    the model is built, as Trainer does: as `padding_idx` at build time it would freeze that embedding row.
    """
    if pad_token_id is None:
        return
    model.config.get_text_config().pad_token_id = pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = pad_token_id


def fit_embeddings_to_tokenizer(model, tokenizer) -> None:
    """Grow the embedding matrix if the tokenizer has ids beyond it (a pad token added to the vocabulary)."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
