"""Model presets with the published LLaMA architectures (random weights), and shrinking one for a small device.

The shapes are those of the released checkpoints' config.json (LLaMA-1 from the paper and Meta's
params.json, Llama 2 and Llama 3 from their Hugging Face repositories). `bench-20m` is the issue's small
benchmark model: the LLaMA-2 vocabulary and tokenizer on a 4-layer, 256-wide body.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from llama_hw.errors import UsageError


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs formula and LlamaConfig need to know about a decoder-only LLaMA model."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def llama_config(self):
        from transformers import LlamaConfig

        fields = asdict(self)
        rope_theta = fields.pop("rope_theta")
        return LlamaConfig(**fields, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                           use_cache=False)  # fmt: skip

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """The shape of a transformers LLaMA-style config (a loaded `--model PATH`)."""
        rope = getattr(config, "rope_parameters", None) or {}
        return cls(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            vocab_size=config.vocab_size,
            max_position_embeddings=config.max_position_embeddings,
            rms_norm_eps=getattr(config, "rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )


_LLAMA1 = {"vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6}
_LLAMA2 = {"vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}

PRESETS: dict[str, ModelShape] = {
    "llama-7b": ModelShape(4096, 11008, 32, 32, 32, **_LLAMA1),
    "llama-13b": ModelShape(5120, 13824, 40, 40, 40, **_LLAMA1),
    "llama-33b": ModelShape(6656, 17920, 60, 52, 52, **_LLAMA1),
    "llama-65b": ModelShape(8192, 22016, 80, 64, 64, **_LLAMA1),
    "llama2-7b": ModelShape(4096, 11008, 32, 32, 32, **_LLAMA2),
    "llama2-13b": ModelShape(5120, 13824, 40, 40, 40, **_LLAMA2),
    "llama2-70b": ModelShape(8192, 28672, 80, 64, 8, **_LLAMA2),
    "llama3-8b": ModelShape(4096, 14336, 32, 32, 8, vocab_size=128256, max_position_embeddings=8192,
                            rms_norm_eps=1e-5, rope_theta=500000.0),  # fmt: skip
    "bench-20m": ModelShape(256, 688, 4, 4, 4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
}


@dataclass(frozen=True)
class ShapeOverrides:
    """`--layers K --hidden H --heads N --kv-heads N --intermediate I --vocab V` (None = the preset's)."""

    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    intermediate: int | None = None
    vocab: int | None = None

    def any(self) -> bool:
        return any(value is not None for value in asdict(self).values())


def llama_ffn_size(hidden: int, multiple_of: int = 256) -> int:
    """Meta's SwiGLU width for a hidden size: 2/3 of 4h, rounded up to a multiple of 256 (4096 -> 11008)."""
    return multiple_of * math.ceil(int(2 * 4 * hidden / 3) / multiple_of)


def shrink(shape: ModelShape, overrides: ShapeOverrides) -> ModelShape:
    """The preset with some dimensions replaced; heads follow a new width unless given (head size kept)."""
    for flag, value in asdict(overrides).items():
        if value is not None and value <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    hidden = overrides.hidden or shape.hidden_size
    heads = overrides.heads or (shape.num_attention_heads if hidden == shape.hidden_size
                                else max(1, hidden // shape.head_dim))  # fmt: skip
    kv_ratio = shape.num_attention_heads // shape.num_key_value_heads
    kv_heads = overrides.kv_heads or max(1, heads // kv_ratio)
    if hidden % heads:
        raise UsageError(f"--hidden {hidden} is not divisible by {heads} attention heads; set --heads")
    if heads % kv_heads:
        raise UsageError(f"{heads} attention heads are not a multiple of {kv_heads} key/value heads; set --kv-heads")
    intermediate = overrides.intermediate or (shape.intermediate_size if hidden == shape.hidden_size
                                              else llama_ffn_size(hidden))  # fmt: skip
    return replace(
        shape,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=overrides.layers or shape.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=overrides.vocab or shape.vocab_size,
    )


def preset_shape(name: str, overrides: ShapeOverrides = ShapeOverrides()) -> ModelShape:
    if name not in PRESETS:
        raise UsageError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)} or give a model directory")
    return shrink(PRESETS[name], overrides)
