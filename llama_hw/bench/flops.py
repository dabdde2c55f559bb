"""Model FLOPs of a training step, and MFU.

The count is the usual one (PaLM, appendix B; Megatron-LM): a weight matrix costs 2 FLOPs per token and
parameter in the forward pass, 2 for the gradient of its input and 2 for the gradient of its weight —
6N for full fine-tuning, where N counts the matrices a token is multiplied by (attention and MLP
projections, the output head; the input embedding is a lookup). Frozen weights (LoRA's base) skip the
weight gradient. Attention adds 12 x layers x (heads x head size) x context per token: QK^T and AV, 2
FLOPs each per context position, x3 for forward and backward, counted without the causal half, as PaLM
does. Recomputation (activation checkpointing) is not model work and is not counted.

Two choices make the count describe the training objective rather than one implementation of it:
- the output head counts at the positions that have a label (all of them in pre-training-style rows;
  the replies in SFT): the logits of a prompt or padding position are not part of the loss;
- the context of a token is the sequence the attention runs over as the batch is laid out: the padded
  row for padded batches, its own conversation for packed rows (block-diagonal attention).
So a batch costs `body x tokens + head x labelled positions + attention_coefficient x sum of length^2`.
`mfu` applies it to every processed position (padding included, as the Ascend port counted), `mfu_effective` to
real text only (the real sequences' own lengths): the work any correct implementation must do.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_hw.bench.presets import ModelShape


def body_matmul_parameters(shape: ModelShape) -> int:
    """Weights a token is multiplied by in the decoder layers: q, k, v, o and the three MLP matrices."""
    attention = shape.hidden_size * shape.head_dim * (2 * shape.num_attention_heads + 2 * shape.num_key_value_heads)
    return shape.num_hidden_layers * (attention + 3 * shape.hidden_size * shape.intermediate_size)


def matmul_parameters(shape: ModelShape) -> int:
    """N of the 6N rule: the decoder layers' matrices and the output head."""
    return body_matmul_parameters(shape) + shape.vocab_size * shape.hidden_size


@dataclass(frozen=True)
class FlopsModel:
    """FLOPs of a training token: `body` each, `head` where it has a label, attention per context position."""

    body: float  # 4 x decoder matrices + 2 x the trainable ones (6 N_body for full fine-tuning)
    head: float  # the output head: 6 V h when it trains, 4 V h when frozen
    attention_coefficient: float  # 12 x layers x heads x head size

    @classmethod
    def for_shape(cls, shape: ModelShape, adapter_parameters: int = 0, full: bool = True) -> FlopsModel:
        """`adapter_parameters`: LoRA matrices added to the decoder layers (all trainable); `full`: base trains."""
        body = body_matmul_parameters(shape) + adapter_parameters
        trainable = body if full else adapter_parameters
        head = shape.vocab_size * shape.hidden_size
        return cls(
            body=4.0 * body + 2.0 * trainable,
            head=(6.0 if full else 4.0) * head,
            attention_coefficient=12.0 * shape.num_hidden_layers * shape.num_attention_heads * shape.head_dim,
        )

    def per_token(self, context: int, labelled: bool = True) -> float:
        """FLOPs of one token attending over `context` positions (6N + 12 L h T for full fine-tuning)."""
        return self.body + (self.head if labelled else 0.0) + self.attention_coefficient * context

    def batch(self, tokens: float, squared_lengths: float, labelled: float) -> float:
        """FLOPs of `tokens` positions, `labelled` of them with a label, in sequences whose squared
        lengths sum to `squared_lengths`."""
        return self.body * tokens + self.head * labelled + self.attention_coefficient * squared_lengths


def mfu(flops_per_second: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's dense peak; None if the peak is unknown."""
    if not peak_tflops:
        return None
    return flops_per_second / (peak_tflops * 1e12)
