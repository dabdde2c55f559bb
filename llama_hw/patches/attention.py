"""Plugging an attention implementation into a transformers model, reversibly (shared by the patches).

transformers 5 picks a model's attention function from `AttentionInterface` by `config._attn_implementation`
and builds its mask with the function registered under the same name in `AttentionMaskInterface`. A name
registered only in the first gets `attention_mask=None` (masking_utils returns early for unknown names),
so padding would be silently ignored: a custom implementation registers both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llama_hw.patches.base import Changes


def register_attention(changes: Changes, name: str, attention: Callable, mask: Callable) -> None:
    """Register `attention` and its `mask` builder under `name` (process-wide, released by the last undo)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    # `register()` writes to the class-level `_global_mapping`, which is also what masking_utils consults.
    changes.set_shared(AttentionInterface._global_mapping, name, attention)
    changes.set_shared(AttentionMaskInterface._global_mapping, name, mask)


def set_attention_implementation(changes: Changes, model: Any, name: str) -> None:
    """Switch `model` and its sub-models to `name`; undo restores every config's previous value exactly."""
    from transformers import PreTrainedModel

    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, PreTrainedModel)}
    for config in configs.values():
        changes.set(config, "_attn_implementation_internal", config._attn_implementation_internal)
    model.set_attn_implementation(name)


def attend_mask(*, allow_is_causal_skip: bool = True, **mask_arguments: Any) -> torch.Tensor | None:
    """transformers' sdpa mask (bool [B, 1, Sq, Skv], True = attend; None = plain causal), with query rows
    that see no key at all (left padding) opened to every key.

    Those rows belong to padding: their output is discarded, but a row with every key masked is undefined
    on the device ("invalid rows" in the npu_fusion_attention docs). Padding, packed sequences (position_ids
    restarting, no attention_mask) and KV-cache offsets all come from transformers' mask functions.
    """
    from transformers.masking_utils import sdpa_mask

    mask = sdpa_mask(allow_is_causal_skip=allow_is_causal_skip, **mask_arguments)
    if mask is None:
        return None
    return mask | ~mask.any(dim=-1, keepdim=True)


def materialised_attend_mask(**mask_arguments: Any) -> torch.Tensor | None:
    """`attend_mask`, never skipped for plain causal attention (for kernels without a causal mode)."""
    mask_arguments["allow_is_causal_skip"] = False
    return attend_mask(**mask_arguments)


def padding_mask_only(**mask_arguments: Any) -> torch.Tensor | None:
    """transformers' flash-attention mask builder: the 2-D padding mask (None without padding) instead of a
    dense 4-D one, for implementations that find the sequences themselves (varlen)."""
    from transformers.masking_utils import flash_attention_mask

    return flash_attention_mask(**mask_arguments)


def dense_mask(padding: torch.Tensor, q_length: int, causal: bool = True) -> torch.Tensor:
    """The bool [B, 1, q_length, kv_length] mask (True = attend) for a 2-D padding mask whose last q_length
    positions are the queries (after a KV cache they line up with the last keys), as `attend_mask` opens it."""
    batch, kv_length = padding.shape
    if causal:
        return attend_mask(batch_size=batch, q_length=q_length, kv_length=kv_length, q_offset=kv_length - q_length,
                           attention_mask=padding.bool(), device=padding.device,
                           allow_is_causal_skip=False)  # fmt: skip
    mask = padding.bool()[:, None, None, :].expand(batch, 1, q_length, kv_length)
    return mask | ~mask.any(dim=-1, keepdim=True)
