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

The same code runs on every backend (CPU, CUDA, Ascend): a GEMM, amax / exp / sum / scatter_add, all
plain torch ops. On an accelerator the saving is memory rather than time: 4 x 2048 tokens x 128,256 vocab
(Llama-3) of fp32 logits is 4 GiB, and the stock softmax and its gradient add as much again; one such step
peaked at 12.72 GiB stock and 1.63 GiB chunked on the CPU (benchmarks/chunked_head_memory.py).

Sharded heads:
- DeepSpeed ZeRO-3 gathers a parameter only while its own module runs, and the chunked pass reads the head
  weight without calling `lm_head`. The weight is registered with `deepspeed.zero.register_external_parameter`
  as a parameter of the model's own forward (the engine's API for a weight used outside its module), so
  ZeRO-3 gathers it for the forward and again for the backward, and reduce-scatters its gradient as usual
  (two gloo ranks train like one stock process: tests/test_patches_head_sharded.py).
- FSDP2 unshards the root unit (which holds the head unless the head is wrapped on its own) before the
  model's forward, so the chunked pass sees the whole weight (the same two-rank test, with transformers'
  load-time FSDP2 on the CPU). A head that is its own FSDP unit stays a DTensor shard here: that run takes
  the stock forward and says so once (a warning naming the reason).

In training mode the output has no `logits` (Trainer reads only the loss). Evaluation (eval mode), calls
without labels or with `logits_to_keep`, a custom `loss_function`, a head with a bias, and a head weight
that is not whole at the time of the call run the stock forward. With `--use_liger_kernel` the patch steps
aside: Liger's fused linear cross-entropy replaces the same forward (llama_hw/patches/liger.py).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from llama_hw.patches.base import Changes, Patch, PatchContext

logger = logging.getLogger(__name__)

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


def is_zero3_param(weight) -> bool:
    return hasattr(weight, "ds_id")  # set on every parameter DeepSpeed ZeRO-3 partitions


def head_not_whole(model) -> str | None:
    """Why the head weight cannot go through the chunked pass at this moment, or None when it can."""
    head = model.lm_head
    weight = head.weight
    if getattr(head, "bias", None) is not None:
        return "the head has a bias"
    if is_zero3_param(weight) and getattr(getattr(weight, "ds_status", None), "name", "") != "AVAILABLE":
        return "DeepSpeed ZeRO-3 has not gathered the head weight (it was partitioned after the patch)"
    if type(weight.data) is not torch.Tensor:  # a DTensor is a subclass
        return "the head weight is an FSDP2 DTensor shard here (the head is its own FSDP unit)"
    if tuple(weight.shape) != (model.config.vocab_size, model.config.hidden_size):
        return f"the head weight has shape {tuple(weight.shape)}, not (vocab, hidden)"
    return None


def chunked_loss_forward(stock):
    """`LlamaForCausalLM.forward` (`stock`, bound), returning only the loss in training mode.

    The KV cache is never named here: transformers 5.24 renamed `past_key_values` to `cache` (the old name
    warns, and goes in 5.40), so whichever the caller passes travels in `kwargs` to the stock code.
    """

    said: list[str] = []  # each reason for taking the stock head is logged once per model

    def head_usable(model) -> bool:
        reason = head_not_whole(model)
        if reason is not None and reason not in said:
            said.append(reason)
            logger.warning("chunked_cross_entropy: %s; training steps take the stock head", reason)
        return reason is None

    def forward(input_ids=None, attention_mask=None, position_ids=None, *, inputs_embeds=None, labels=None,
                use_cache=None, logits_to_keep=0, **kwargs):  # fmt: skip
        model = stock.__self__
        if not (
            model.training
            and labels is not None
            and torch.is_grad_enabled()
            and isinstance(logits_to_keep, int) and logits_to_keep == 0
            and kwargs.get("return_dict") is not False  # peft passes return_dict=None: the default, a dict
            and "_loss_function" not in vars(model)  # a custom loss set on this model
            and head_usable(model)
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


def liger_replaces_the_head(ctx: PatchContext) -> bool:
    """--use_liger_kernel: Trainer gives the model Liger's forward (fused linear cross-entropy) after us."""
    args = ctx.training_args
    if args is None or not getattr(args, "use_liger_kernel", False):
        return False
    config = getattr(args, "liger_kernel_config", None) or {}
    return bool(config.get("fused_linear_cross_entropy", True))


def check(ctx: PatchContext) -> str | None:
    if liger_replaces_the_head(ctx):
        return "Liger's fused linear cross-entropy is used instead (--use_liger_kernel)"
    if ctx.model is None:
        return None
    from transformers import LlamaForCausalLM

    if not isinstance(ctx.model, LlamaForCausalLM):
        return f"for LlamaForCausalLM; this is {type(ctx.model).__name__}"
    if getattr(ctx.model.lm_head, "bias", None) is not None:
        return "the head has a bias"
    return None


def zero3_training(model) -> bool:
    """The head weight is (or will be, when the engine starts) partitioned by DeepSpeed ZeRO-3."""
    if is_zero3_param(model.lm_head.weight):
        return True
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:
        return False
    return is_deepspeed_zero3_enabled()


def register_head_with_zero3(model, changes: Changes) -> None:
    """Make ZeRO-3 gather the head weight for the model's own forward and backward (engine API)."""
    # deepspeed.zero.register_external_parameter, and its inverse that deepspeed.zero does not re-export
    from deepspeed.runtime.zero.partition_parameters import (
        register_external_parameter,
        unregister_external_parameter,
    )

    weight = model.lm_head.weight
    register_external_parameter(model, weight)
    changes.on_undo(lambda: unregister_external_parameter(model, weight))
    changes.note = "ZeRO-3: the head weight is gathered for the model's forward (register_external_parameter)"


def apply(ctx: PatchContext) -> Changes:
    changes = Changes()
    if zero3_training(ctx.model):
        register_head_with_zero3(ctx.model, changes)
    changes.set(ctx.model, "forward", chunked_loss_forward(ctx.model.forward))
    return changes


PATCHES = [
    Patch(
        name="chunked_cross_entropy",
        summary="training loss from the hidden states in chunks, only at labelled positions (no logits tensor)",
        replaces="LlamaForCausalLM.forward of this model in training mode -> loss without logits",
        scope="model", model_types=("llama",), modes=("train",),
        check=check, apply=apply, order=70,
    ),
]  # fmt: skip
