"""What is being planned: the model's shape, the fine-tuning method, precision, rows and devices.

Parameter counts come from the shape (exact for LLaMA-family models: tests compare them with a model
built on the meta device by accelerate's `init_empty_weights`); a `--model PATH` is read from its
config.json only, no weights are loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llama_hw.bench.presets import PRESETS, ModelShape
from llama_hw.errors import UsageError
from llama_hw.models.hub import looks_like_hub_id, resolve_model_path

FINETUNING_TYPES = ("full", "lora", "qlora")
# Linear modules of a LLaMA decoder layer: (name, in_features, out_features) as functions of the shape.
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_shapes(shape: ModelShape) -> dict[str, tuple[int, int]]:
    h, kv = shape.hidden_size, shape.num_key_value_heads * shape.head_dim
    i = shape.intermediate_size
    q = shape.num_attention_heads * shape.head_dim
    return {
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }  # fmt: skip


@dataclass(frozen=True)
class ParameterCounts:
    total: int  # every parameter of the model (embedding, layers, norms, head)
    layer: int  # one decoder layer
    embedding: int
    head: int  # 0 when tied to the embedding
    trainable: int  # full: total; LoRA: the adapters
    adapter: int  # LoRA matrices (0 for full fine-tuning)

    @property
    def largest_layer(self) -> int:
        """The largest block ZeRO-3 / FSDP gathers at once: a decoder layer, the embedding or the head."""
        return max(self.layer, self.embedding, self.head)


@dataclass(frozen=True)
class Job:
    shape: ModelShape
    finetuning_type: str = "full"
    lora_r: int = 8
    lora_target: tuple[str, ...] = LINEAR_MODULES
    lora_dropout: float = 0.05
    precision: str = "bf16"
    seq_len: int = 2048
    world_size: int = 1
    nodes: int = 1
    gradient_accumulation_steps: int = 1
    dropout_mask_bytes: int = 1  # the backend's (Backend.dropout_mask_bytes)

    def __post_init__(self):
        if self.finetuning_type not in FINETUNING_TYPES:
            raise UsageError(f"--finetuning_type {self.finetuning_type}: choose one of {', '.join(FINETUNING_TYPES)}")
        unknown = [name for name in self.lora_target if name not in LINEAR_MODULES]
        if unknown:
            raise UsageError(f"--lora_target {','.join(unknown)}: not a LLaMA linear module; choose from "
                             f"{', '.join(LINEAR_MODULES)} or all")  # fmt: skip
        for flag, value in (("--seq-len", self.seq_len), ("--devices", self.world_size), ("--lora_r", self.lora_r),
                            ("--nodes", self.nodes)):  # fmt: skip
            if value < 1:
                raise UsageError(f"{flag} must be a positive integer, got {value}")

    @property
    def uses_lora(self) -> bool:
        return self.finetuning_type in ("lora", "qlora")

    @property
    def devices_per_node(self) -> int:
        return max(1, self.world_size // self.nodes)

    def parameters(self) -> ParameterCounts:
        s = shape = self.shape
        linears = linear_shapes(shape)
        layer = sum(i * o for i, o in linears.values()) + 2 * s.hidden_size  # + the two RMSNorm weights
        embedding = s.vocab_size * s.hidden_size
        head = 0 if s.tie_word_embeddings else embedding
        total = embedding + s.num_hidden_layers * layer + s.hidden_size + head
        adapter = 0
        if self.uses_lora:
            per_layer = sum(self.lora_r * (linears[name][0] + linears[name][1]) for name in self.lora_target)
            adapter = s.num_hidden_layers * per_layer
        trainable = adapter if self.uses_lora else total
        return ParameterCounts(total, layer, embedding, head, trainable, adapter)


def model_shape(model: str) -> ModelShape:
    """A preset name, a model directory / config.json, or a Hub id (config only: no weights are read)."""
    if model in PRESETS:
        return PRESETS[model]
    path = Path(model).expanduser()
    if not path.exists() and looks_like_hub_id(model):  # org/name: config.json from the Hub cache, no weights
        path = resolve_model_path(model, flag="--model", weights=False)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise UsageError(f"--model {model}: not a preset ({', '.join(PRESETS)}) and no config.json there")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UsageError(f"{config_file}: not valid JSON ({err}); fix or re-download the model's config.json") from err
    try:
        from transformers import AutoConfig

        config = AutoConfig.for_model(**raw)
        return ModelShape.from_config(config)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UsageError(f"{config_file}: not a LLaMA-style model config ({err})") from err
