"""What fschat 0.2.36's CLI chat loop needs to run on transformers 5 and on llama_hw's model loading.

Process-level, inference mode only, applied only when the process has imported fastchat, reversible.
FastChat's files are never edited: its module attributes are swapped through a change journal.

- fastchat_context_length: `get_context_length` reads `config.rope_scaling["factor"]` whenever rope_scaling
  is set. transformers 5 mirrors `rope_parameters` there (`{'rope_theta': ..., 'rope_type': 'default'}`,
  no factor), so chat_loop died with `KeyError: 'factor'` on every LLaMA config. A missing factor now
  counts as 1, which is what FastChat meant; configs with a factor keep FastChat's arithmetic.
- fastchat_model_loader: FastChat's `load_model` hard-codes devices and dtypes (fp16 and a single
  `npu:0` on Ascend, FastChat #3060; fp16 on CUDA; `.to(device)` for one GPU; bf16 only with IPEX on
  CPU) and loads tokenizers with `trust_remote_code=True`. It now returns the model llama_hw loaded and
  patched (`serve_model`), or loads through `llama_hw.models.load_model` from FastChat's own arguments:
  backend from `device`, `num_gpus` devices via the backend's device_map, dtype checked against the
  backend's precisions, safetensors / weights_only, remote code off.
- fastchat_generate_stream: FastChat's `generate_stream` (what `llama-hw chat` streams through) passes
  `past_key_values=` to the model and reads `out.past_key_values`; transformers 5.24 renamed both to
  `cache` (the old name warns, and goes in 5.40). FastChat's own loop now sees the model through
  `CacheUnderCurrentName`, which hands the cache to the model under the name its forward takes and reads
  it back from the output under the name the output has, so the chat keeps working when the old name is
  removed, and no deprecation warning is printed. The decoding loop itself stays FastChat's.
"""

from __future__ import annotations

import contextlib
import sys
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llama_hw.errors import UsageError
from llama_hw.patches.base import Changes, Patch, PatchContext

# FastChat modules that bind the patched functions by name at import (`from fastchat.utils import ...`).
LOADER_MODULES = ("fastchat.model.model_adapter", "fastchat.model", "fastchat.serve.inference")
CONTEXT_LENGTH_MODULES = ("fastchat.utils", "fastchat.serve.inference")

_served: tuple[Any, Any] | None = None


def fastchat_in_use(ctx: PatchContext) -> str | None:
    return None if "fastchat" in sys.modules else "fastchat is not imported by this process"


def context_length(config: Any) -> int:
    """FastChat's get_context_length, with a rope_scaling that has no `factor` counting as factor 1."""
    from fastchat.utils import SEQUENCE_LENGTH_KEYS

    rope_scaling = getattr(config, "rope_scaling", None) or {}
    factor = rope_scaling.get("factor") or 1
    for key in SEQUENCE_LENGTH_KEYS:
        value = getattr(config, key, None)
        if value is not None:
            return int(factor * value)
    return 2048


def _swap(changes: Changes, module_names: tuple[str, ...], attribute: str, replacement: Any) -> None:
    """Replace `attribute` in each module, and in any other loaded fastchat module that imported it by name."""
    import importlib

    original = getattr(importlib.import_module(module_names[0]), attribute)
    for name in module_names:
        importlib.import_module(name)
    holders = [module for name, module in list(sys.modules.items())
               if name.split(".")[0] == "fastchat" and getattr(module, attribute, None) is original]
    for module in holders:
        changes.set(module, attribute, replacement)


def apply_context_length(ctx: PatchContext) -> Changes:
    changes = Changes()
    _swap(changes, CONTEXT_LENGTH_MODULES, "get_context_length", context_length)
    return changes


@contextlib.contextmanager
def serve_model(model: Any, tokenizer: Any) -> Iterator[None]:
    """While inside, FastChat's (patched) `load_model` returns this model and tokenizer."""
    global _served
    previous, _served = _served, (model, tokenizer)
    try:
        yield
    finally:
        _served = previous


def load_model_through_llama_hw(
    model_path: str,
    device: str | None = None,
    num_gpus: int = 1,
    max_gpu_memory: str | None = None,
    dtype: Any = None,
    load_8bit: bool = False,
    cpu_offloading: bool = False,
    gptq_config: Any = None,
    awq_config: Any = None,
    exllama_config: Any = None,
    xft_config: Any = None,
    revision: str = "main",
    debug: bool = False,
) -> tuple[Any, Any]:
    """FastChat's `load_model` signature; llama_hw decides placement, dtype and weights format."""
    if _served is not None:
        return _served
    from llama_hw.backends import TORCH_DTYPES, select_backend
    from llama_hw.data import load_tokenizer
    from llama_hw.models import load_model, resolve_model_source
    from llama_hw.patches import apply_patches

    quantized = load_8bit or cpu_offloading or exllama_config or xft_config or any(
        config is not None and getattr(config, "wbits", 16) < 16 for config in (gptq_config, awq_config)
    )
    if quantized:
        raise UsageError("FastChat's 8-bit, GPTQ, AWQ, ExLlama and xFasterTransformer loading is not routed "
                         "through llama_hw; set LLAMA_HW_PATCHES=-fastchat_model_loader to use FastChat's own")
    backend = select_backend(device).backend
    precision = next((name for name, value in TORCH_DTYPES.items() if value == dtype), None)
    max_memory = {index: max_gpu_memory for index in range(num_gpus)} if max_gpu_memory and num_gpus > 1 else None
    source = resolve_model_source(model_path)
    model = load_model(source, backend, precision=precision, num_devices=num_gpus, max_memory=max_memory)
    apply_patches(model, backend, mode="infer")
    return model, load_tokenizer(str(source.tokenizer_dir))


CACHE_NAMES = ("cache", "past_key_values")  # transformers >= 5.24 first, then the name before it


def cache_parameter(model: Any) -> str:
    """The name under which `model`'s forward takes the KV cache in the installed transformers."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in CACHE_NAMES if name in parameters), CACHE_NAMES[-1])


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned, under whichever name this transformers' output carries it."""
    for name in CACHE_NAMES:
        if name in output.keys():  # ModelOutput keys: only the fields set, no deprecated alias
            return output[name]
    return None


@dataclass
class FastChatStep:
    """What FastChat's generate_stream reads from a forward: logits and the cache as `past_key_values`."""

    logits: Any
    past_key_values: Any


class CacheUnderCurrentName:
    """The model as FastChat's generate_stream uses it: `model(..., past_key_values=c)` reaches the forward
    under its own cache name, and the output's cache comes back as `past_key_values`. Every other attribute
    (config, device, generation_config) is the model's."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._cache_name = cache_parameter(model)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, *args: Any, past_key_values: Any = None, **kwargs: Any) -> FastChatStep:
        if past_key_values is not None:
            kwargs[self._cache_name] = past_key_values
        output = self._model(*args, **kwargs)
        return FastChatStep(logits=output.logits, past_key_values=output_cache(output))


def apply_generate_stream(ctx: PatchContext) -> Changes:
    import fastchat.serve.inference as inference

    fastchat_generate_stream = inference.generate_stream

    def generate_stream(model, tokenizer, params, device, context_len, stream_interval=2, judge_sent_end=False):
        return fastchat_generate_stream(CacheUnderCurrentName(model), tokenizer, params, device, context_len,
                                        stream_interval=stream_interval, judge_sent_end=judge_sent_end)  # fmt: skip

    changes = Changes()
    # get_generate_stream_function imports it from fastchat.serve.inference at each call
    _swap(changes, ("fastchat.serve.inference",), "generate_stream", generate_stream)
    return changes


def apply_model_loader(ctx: PatchContext) -> Changes:
    changes = Changes()
    _swap(changes, LOADER_MODULES, "load_model", load_model_through_llama_hw)
    return changes


PATCHES = [
    Patch(
        name="fastchat_context_length",
        summary="FastChat's context length tolerates transformers 5's rope_scaling without a factor",
        replaces="fastchat.utils.get_context_length -> factor defaults to 1 (KeyError: 'factor')",
        scope="process", modes=("infer",), requires=("fschat",),
        check=fastchat_in_use, apply=apply_context_length, order=25,
    ),
    Patch(
        name="fastchat_model_loader",
        summary="FastChat's chat loop gets its model from llama_hw: backend placement, dtype, adapter, patches",
        replaces="fastchat load_model (fp16, one hard-coded device) -> llama_hw.models.load_model",
        scope="process", modes=("infer",), requires=("fschat",),
        check=fastchat_in_use, apply=apply_model_loader, order=26,
    ),
    Patch(
        name="fastchat_generate_stream",
        summary="FastChat's generate_stream passes and reads the KV cache under the installed transformers' name",
        replaces="fastchat generate_stream's model(past_key_values=) / out.past_key_values -> the model's cache "
        "name (transformers 5.24: cache; past_key_values goes in 5.40)",
        scope="process", modes=("infer",), requires=("fschat",),
        check=fastchat_in_use, apply=apply_generate_stream, order=27,
    ),
]  # fmt: skip
