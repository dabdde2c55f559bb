"""Load a model for inference: a base checkpoint, optionally a LoRA adapter, on one or several devices.

Weights come from safetensors (a `.bin` checkpoint is read with `weights_only=True`), the dtype from the
backend's precisions, placement from the backend: one device, or a `device_map` over the first N devices
when a model does not fit on one. Remote code runs only when the caller asks for it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llama_hw.backends import TORCH_DTYPES, Backend
from llama_hw.errors import UsageError
from llama_hw.models.checks import check_checkpoint, loading_errors
from llama_hw.models.hub import resolve_model_path
from llama_hw.models.metadata import read_run_metadata

ADAPTER_CONFIG = "adapter_config.json"
# peft's own file names (peft.utils.SAFETENSORS_WEIGHTS_NAME / WEIGHTS_NAME): when neither is in the folder,
# peft takes the folder's path for a Hub repo id and goes to the network.
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# A saved tokenizer has one of these (tokenizer_config.json alone is settings, not a tokenizer).
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
# Share of each device's free memory a multi-device placement may fill: the rest is left for the KV
# cache and activations that grow during generation (FastChat keeps 15% back for the same reason).
DEVICE_MEMORY_FRACTION = 0.9


@dataclass(frozen=True)
class ModelSource:
    """Where a model's pieces live: the base checkpoint, an optional LoRA adapter, the tokenizer."""

    base: Path
    adapter: Path | None = None
    # llama_hw.json of the base, overlaid with the adapter's: what the training run recorded.
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer_dir(self) -> Path:
        """The adapter's directory when the trainer saved the tokenizer there, else the base's."""
        if self.adapter is not None and any((self.adapter / name).is_file() for name in TOKENIZER_FILES):
            return self.adapter
        return self.base


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def check_adapter_dir(path: str | os.PathLike, *, flag: str = "--adapter") -> None:
    """Raise UsageError unless `path` is a local LoRA adapter folder with its config and its weights.

    Called before peft sees the folder: peft reads a folder without adapter weights as a Hub repo id
    (a network attempt, then a traceback far from the cause).
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UsageError(f"{flag} {folder} does not exist; give the directory a LoRA training run saved")
    if not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a directory; give the directory a LoRA training run saved")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise UsageError(f"{flag} {folder} has no {ADAPTER_CONFIG}; it is not a LoRA adapter directory "
                         "(give the directory a LoRA training run saved)")
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        raise UsageError(
            f"{flag} {folder} has {ADAPTER_CONFIG} but no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}); "
            "copy the adapter's weights into it or give the directory the training run saved"
        )


def adapter_base_model(adapter: Path) -> str | None:
    """The base model an adapter was trained on: llama_hw.json's `base_model`, else peft's record."""
    recorded = read_run_metadata(adapter).get("base_model")
    if recorded:
        return str(recorded)
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path


def _require_model_dir(path: Path, flag: str) -> None:
    if not (path / "config.json").is_file():
        raise UsageError(
            f"{flag} {path} is not a Hugging Face model directory (no config.json); give the directory "
            "that save_pretrained wrote"
        )


def resolve_model_source(model_path: str | os.PathLike, adapter: str | os.PathLike | None = None) -> ModelSource:
    """Check the paths and work out base, adapter and recorded metadata.

    Each path may be a local directory or a Hugging Face Hub id (`org/name`, see llama_hw.models.hub).
    `model_path` may itself be a LoRA adapter directory (as the trainer saves it); its base model is then
    the one recorded in its llama_hw.json or adapter_config.json.
    """
    model_dir = resolve_model_path(model_path, flag="--model-path")
    if adapter is None and is_adapter_dir(model_dir):
        adapter_dir = model_dir
        check_adapter_dir(adapter_dir, flag="--model-path")
        base = adapter_base_model(adapter_dir)
        if not base:
            raise UsageError(f"adapter {adapter_dir} does not record its base model; pass the base as --model-path "
                             f"and the adapter as --adapter")
        what = f"the base model of adapter {adapter_dir},"
        model_dir = resolve_model_path(base, flag=what)
        _require_model_dir(model_dir, what)
    else:
        _require_model_dir(model_dir, "--model-path")
        adapter_dir = resolve_model_path(adapter, flag="--adapter") if adapter is not None else None
        if adapter_dir is not None:
            check_adapter_dir(adapter_dir)
    check_checkpoint(model_dir)
    if adapter_dir is not None:
        check_checkpoint(adapter_dir)
    metadata = read_run_metadata(model_dir)
    if adapter_dir is not None:
        metadata = {**metadata, **read_run_metadata(adapter_dir)}
    return ModelSource(base=model_dir, adapter=adapter_dir, metadata=metadata)


def placement(backend: Backend, num_devices: int = 1, max_memory: dict[Any, Any] | None = None) -> dict[str, Any]:
    """`from_pretrained` keyword arguments that put the model on `num_devices` of `backend`'s devices."""
    available = backend.device_count()
    if num_devices < 1:
        raise UsageError(f"--num-devices must be at least 1, got {num_devices}")
    if num_devices > available:
        raise UsageError(
            f"--num-devices {num_devices} is more than the {available} {backend.name} device(s) this process "
            f"sees; use --num-devices {available} or fewer"
        )
    if num_devices == 1:
        return {"device_map": {"": backend.device(0)}}
    if max_memory is None:
        # accelerate knows how to ask every accelerator type for its free memory; keys 0..N-1 are the
        # backend's devices, and leaving out "cpu" keeps the model off the host instead of silently slow.
        from accelerate.utils import get_max_memory

        free = get_max_memory()
        max_memory = {index: int(free[index] * DEVICE_MEMORY_FRACTION) for index in range(num_devices)}
    return {"device_map": "auto", "max_memory": max_memory}


def inference_dtype(backend: Backend, precision: str | None) -> torch.dtype:
    """The requested precision if the device runs it, else the backend's fastest one."""
    if precision is None:
        precision = backend.default_precision()
    backend.check_precision(precision)
    return TORCH_DTYPES[precision]


def _weights_kwargs(base: Path) -> dict[str, Any]:
    # safetensors whenever the checkpoint has it; a pickled .bin only ever through weights_only.
    has_safetensors = any(base.glob("*.safetensors"))
    return {"use_safetensors": True} if has_safetensors else {"weights_only": True}


@contextlib.contextmanager
def peft_deprecations_hidden():
    """peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecated: a FutureWarning
    about peft's code on every adapter load, which the user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_adapter(model, adapter: Path, merge: bool):
    """Wrap `model` with the LoRA adapter at `adapter`; raise UsageError if it was trained on another model."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights

    check_adapter_dir(adapter)
    try:
        with loading_errors(adapter), peft_deprecations_hidden():
            peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        detail = next((line for line in lines if "mismatch" in line), lines[0])  # the size, not the preamble
        raise UsageError(
            f"--adapter {adapter} does not match the base model ({detail[:300]}); pass the base model it "
            "was trained on as --model-path"
        ) from err
    # peft loads with strict=False: weights for layers the base does not have are dropped silently.
    with loading_errors(adapter):
        saved = set(load_peft_weights(str(adapter), device="cpu"))
    expected = set(get_peft_model_state_dict(peft_model))
    if saved != expected:
        stray = sorted(saved - expected) or sorted(expected - saved)
        raise UsageError(
            f"--adapter {adapter} does not match the base model: {len(saved ^ expected)} adapter weights have "
            f"no place in it (e.g. {stray[0]}); pass the base model it was trained on as --model-path"
        )
    # Merged, the model is a plain transformers model again: faster to run, and the inference patches
    # see the modules they know.
    return peft_model.merge_and_unload() if merge else peft_model


def load_model(
    model_path: str | os.PathLike | ModelSource,
    backend: Backend,
    *,
    adapter: str | os.PathLike | None = None,
    precision: str | None = None,
    num_devices: int = 1,
    max_memory: dict[Any, Any] | None = None,
    trust_remote_code: bool = False,
    merge_adapter: bool = True,
):
    """A causal LM ready for generation (eval mode) on `backend`.

    model_path: a model directory, a LoRA adapter directory whose base model is recorded, or a
        ModelSource from resolve_model_source (then `adapter` must be None).
    adapter: a LoRA adapter directory to apply on load (merged into the weights unless merge_adapter=False).
    precision: "fp32" / "bf16" / "fp16"; default the backend's fastest (`backend.default_precision()`).
    num_devices: spread the layers over this many devices with a device_map (accelerate "auto"),
        each filled to at most `max_memory[i]` (default 90% of its free memory).
    """
    from transformers import AutoModelForCausalLM

    if isinstance(model_path, ModelSource):
        if adapter is not None:
            raise ValueError("pass the adapter inside the ModelSource, not next to it")
        source = model_path
    else:
        source = resolve_model_source(model_path, adapter)
    kwargs = {
        "dtype": inference_dtype(backend, precision),
        "trust_remote_code": trust_remote_code,
        **placement(backend, num_devices, max_memory),
        **_weights_kwargs(source.base),
    }
    with loading_errors(source.base):
        model = AutoModelForCausalLM.from_pretrained(str(source.base), **kwargs)
    if source.adapter is not None:
        model = apply_adapter(model, source.adapter, merge_adapter)
    return model.eval()
