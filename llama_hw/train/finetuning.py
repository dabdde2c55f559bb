"""Which weights train: all of them (full), or LoRA adapters through peft (lora, qlora)."""

from __future__ import annotations

from dataclasses import dataclass

from llama_hw.train.arguments import ALL_LINEAR, FinetuningArguments

PEFT_TASK_TYPES = {"sft": "CAUSAL_LM", "cls": "SEQ_CLS"}


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    def describe(self) -> str:
        share = 100.0 * self.trainable / self.total if self.total else 0.0
        return f"{self.trainable:,} of {self.total:,} parameters trainable ({share:.2f}%)"


def count_parameters(model) -> ParameterCount:
    # ZeRO-3 partitions leave empty tensors behind; DeepSpeed records the full size in ds_numel.
    def numel(param):
        return getattr(param, "ds_numel", param.numel())

    params = list(model.parameters())
    return ParameterCount(sum(numel(p) for p in params if p.requires_grad), sum(numel(p) for p in params))


def lora_config(args: FinetuningArguments, task: str):
    from peft import LoraConfig

    targets = "all-linear" if ALL_LINEAR in args.lora_target else list(args.lora_target)
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        bias=args.lora_bias,
        task_type=PEFT_TASK_TYPES[task],
    )


def apply_finetuning(model, args: FinetuningArguments, *, task: str, gradient_checkpointing: bool):
    """`model` ready for its finetuning type: unchanged for full, wrapped in a peft model for (q)lora."""
    if not args.uses_lora:
        return model
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    from llama_hw.models.loading import peft_deprecations_hidden

    if args.finetuning_type == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    with peft_deprecations_hidden():
        if args.lora_weight_path:
            model = PeftModel.from_pretrained(model, args.lora_weight_path, is_trainable=True)
        else:
            model = get_peft_model(model, lora_config(args, task))
    if gradient_checkpointing:
        # With a frozen embedding nothing before the first checkpointed layer needs a gradient, and
        # reentrant checkpointing would then drop the adapters' gradients.
        model.enable_input_require_grads()
    return model
