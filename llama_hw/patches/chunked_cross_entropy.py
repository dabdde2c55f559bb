"""The training loss of a LLaMA causal LM without its [tokens, vocab] logits: chunked linear cross-entropy.

Stock `LlamaForCausalLM` computes logits for every position (4 x 2048 tokens x 32000 fp32 = 1 GiB), then
log_softmax (another GiB), then a zero-filled GiB for the backward. On a CPU each is a fresh allocation
the kernel pages in; with the softmax passes this was 56 % of a bench-20m step at full 2048-token rows
(torch.profiler). Here, in training mode with labels, only the positions that have a label (no padding,
no prompt) go through the head, a chunk of CHUNK_ROWS rows at a time: each chunk's logits, softmax and
gradients are computed while they are in cache, and the gradients of the hidden states and of the head
weight are kept for the backward. The loss and gradients equal the stock path up to fp32 rounding
(tests/test_bench_patches.py); a 2048-row bench-20m step got 1.2x faster, a dynamically padded SFT step
1.8x (the head then runs on 41 % of the positions).

In training mode the output has no `logits` (Trainer reads only the loss). Evaluation (eval mode), calls
without labels or with `logits_to_keep`, a custom `loss_function`, and a head weight that DeepSpeed ZeRO-3
or FSDP has sharded run the stock forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llama_hw.patches.base import Changes, Patch, PatchContext

CHUNK_ROWS = 256  # a 256 x 32000 fp32 chunk (31 MiB) stays below glibc's mmap threshold and in cache
IGNORE_INDEX = -100


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i -log softmax(hidden_i @ weight.T)[target_i], with both gradients computed chunk by chunk.

    One [chunk_rows, vocab] buffer serves every chunk (the GEMM writes into it, the softmax and its
    gradient run in place: 5-8 % faster than fresh chunks at 2 threads); the gradients are kept on `ctx`
    and scaled in place by the incoming gradient, so backward allocates nothing.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int):
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        buffer = torch.empty((min(chunk_rows, hidden.shape[0]), weight.shape[0]), dtype=hidden.dtype,
                             device=hidden.device)  # fmt: skip
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = hidden[start : start + chunk_rows]
            target = targets[start : start + chunk_rows, None]
            logits = torch.mm(rows, weight.t(), out=buffer[: rows.shape[0]]).float()
            target_logit = logits.gather(1, target)
            row_max = logits.amax(1, keepdim=True)
            probs = logits.sub_(row_max).exp_()
            row_sum = probs.sum(1, keepdim=True)
            total += (row_sum.log() + row_max - target_logit).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            probs.div_(row_sum).scatter_add_(1, target, torch.full_like(target_logit, -1.0))  # softmax - onehot
            grad_logits = probs.to(hidden.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start : start + chunk_rows])
            if grad_weight is not None:
                if grad_logits.dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.t(), rows)
                else:  # accumulate low-precision chunks in fp32
                    grad_weight.add_(torch.mm(grad_logits.t(), rows))
        ctx.grads = (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        if ctx.grads is None:
            raise RuntimeError("LinearCrossEntropy: backward through the same loss twice is not supported")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None  # scaled in place below: a second backward would see scaled values
        for grad in (grad_hidden, grad_weight):
            if grad is not None:
                grad.mul_(grad_total.to(grad.dtype))
        return grad_hidden, grad_weight, None, None


def causal_lm_loss(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> torch.Tensor:
    """transformers' ForCausalLMLoss on `hidden_states @ weight.T`, computed without the logits tensor."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden_states.device)
    kept = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1]).index_select(0, kept)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # what the head's nn.Linear would compute in
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(device_type, enabled=False):
        total = LinearCrossEntropy.apply(hidden, weight, targets.index_select(0, kept), chunk_rows)
    if num_items_in_batch is None:
        return total / kept.numel()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def head_is_whole(model) -> bool:
    """False when ZeRO-3 or FSDP holds only a shard of the head weight (its module hooks gather it)."""
    weight = model.lm_head.weight
    return (
        getattr(model.lm_head, "bias", None) is None
        and not hasattr(weight, "ds_id")
        and type(weight.data) is torch.Tensor  # a DTensor (FSDP2) is a subclass
        and tuple(weight.shape) == (model.config.vocab_size, model.config.hidden_size)
    )


def chunked_loss_forward(stock):
    """`LlamaForCausalLM.forward` (`stock`, bound), returning only the loss in training mode.

    The KV cache is never named here: transformers 5.24 renamed `past_key_values` to `cache` (the old name
    warns, and goes in 5.40), so whichever the caller passes travels in `kwargs` to the stock code.
    """

    def forward(input_ids=None, attention_mask=None, position_ids=None, *, inputs_embeds=None, labels=None,
                use_cache=None, logits_to_keep=0, **kwargs):  # fmt: skip
        model = stock.__self__
        if not (
            model.training
            and labels is not None
            and torch.is_grad_enabled()
            and isinstance(logits_to_keep, int) and logits_to_keep == 0
            and kwargs.get("return_dict", True)
            and "_loss_function" not in vars(model)  # a custom loss set on this model
            and head_is_whole(model)
        ):
            return stock(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                         logits_to_keep=logits_to_keep, **kwargs)  # fmt: skip
        from transformers.modeling_outputs import CausalLMOutputWithPast

        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        outputs = model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)  # fmt: skip
        loss = causal_lm_loss(outputs.last_hidden_state, model.lm_head.weight, labels, shift_labels,
                              num_items_in_batch)  # fmt: skip
        # the cache, hidden states and attentions under the names this transformers gives them; no logits
        rest = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
        return CausalLMOutputWithPast(loss=loss, **rest)

    return forward


def check(ctx: PatchContext) -> str | None:
    if ctx.model is None:
        return None
    from transformers import LlamaForCausalLM

    if not isinstance(ctx.model, LlamaForCausalLM):
        return f"for LlamaForCausalLM; this is {type(ctx.model).__name__}"
    return None


def apply(ctx: PatchContext) -> Changes:
    changes = Changes()
    changes.set(ctx.model, "forward", chunked_loss_forward(ctx.model.forward))
    return changes


PATCHES = [
    Patch(
        name="chunked_cross_entropy",
        summary="training loss from the hidden states in chunks, only at labelled positions (no logits tensor)",
        replaces="LlamaForCausalLM.forward of this model in training mode -> loss without logits",
        scope="model", backends=("cpu",), model_types=("llama",), modes=("train",),
        check=check, apply=apply, order=70,
    ),
]  # fmt: skip
