"""FLOPs of a training step two ways, and MFU.

The count per weight matrix is the usual one (PaLM, appendix B; Megatron-LM): 2 FLOPs per row and
parameter in the forward pass, 2 for the gradient of its input and 2 for the gradient of its weight —
6N for full fine-tuning, where N counts the matrices a token is multiplied by (attention and MLP
projections, the output head; the input embedding is a lookup). Frozen weights (LoRA's base) skip the
weight gradient. Attention costs 12 x layers x (heads x head size) per query/key pair: QK^T and AV, 2
FLOPs each, x3 for forward and backward. Recomputation (activation checkpointing, flash attention's
backward) is not counted: the figures are lower bounds of what the device did.

- executed work (`mfu`): what the kernels of this run compute — the decoder layers on every processed
  row (padding too: the layers run on it), the head on the rows it computes (all, or only the labelled
  ones with the chunked head), attention on the pairs its layout computes (llama_hw/bench/work.py).
  On a correct peak it cannot exceed 1, and it shows what a patch saves only as time, not as work.
- model FLOPs (`model_flops_utilization`): the work any correct implementation must do for this text and
  loss — the decoder layers on every real token, the head at the positions the loss reads, attention on
  each sequence's causal triangle, padding as nothing. In pre-training, where every token is a target, it
  is the papers' 6N + 6 L h n per token (PaLM's 12 L h n halved for causality). It compares runs on the
  same text whatever the implementation does, and it never exceeds the executed work: charging the head
  at unlabelled prompt tokens and attention as the full n x n square (schema 2 of the records) reached
  102 % of a correct peak on packed ShareGPT rows, whose human turns make up most of the text.
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
    """FLOPs per row: `body` through the decoder layers, `head` through the output head, and
    `attention_coefficient` per query/key pair."""

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
        """Model FLOPs of one token attending over `context` positions (6N + 12 L h T for full fine-tuning)."""
        return self.body + (self.head if labelled else 0.0) + self.attention_coefficient * context

    def batch(self, tokens: float, pairs: float, head_rows: float) -> float:
        """FLOPs of `tokens` rows through the decoder layers, `head_rows` through the head and `pairs`
        query/key pairs of attention."""
        return self.body * tokens + self.head * head_rows + self.attention_coefficient * pairs

    def executed(self, counts, head_labelled_only: bool) -> float:
        """The work the kernels did on `counts` (TokenCounts of a layout-aware counter)."""
        return self.batch(counts.processed, counts.attention_pairs, self.head_rows(counts, head_labelled_only))

    def attention(self, counts) -> float:
        return self.attention_coefficient * counts.attention_pairs

    @staticmethod
    def head_rows(counts, head_labelled_only: bool) -> int:
        return counts.trained if head_labelled_only else counts.processed

    def model_flops(self, counts) -> float:
        """Model FLOPs: the layers on every real token, the head on the trained ones, attention on each real
        sequence's causal triangle (sum of n(n+1)/2 = (sum of n^2 + sum of n) / 2)."""
        causal_pairs = (counts.effective_squared + counts.effective) / 2
        return self.batch(counts.effective, causal_pairs, counts.trained)


def mfu(flops_per_second: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's dense peak; None if the peak is unknown."""
    if not peak_tflops:
        return None
    return flops_per_second / (peak_tflops * 1e12)
