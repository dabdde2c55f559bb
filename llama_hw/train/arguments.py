"""The trainer's own flags, as dataclasses for transformers' HfArgumentParser.

Names follow FastChat's `train.py` / `train_lora.py` so their command lines keep working; the data flags
come from `llama_hw.data.DataArguments` and every other flag is transformers' `TrainingArguments`.
Values left at None are filled in by `resolve()` once the whole command line is known (a LoRA flag
implies `--finetuning_type lora`, the task picks the padding side).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_hw.errors import UsageError

FINETUNING_TYPES = ("full", "lora", "qlora")
TASKS = ("sft", "cls")
LORA_BIASES = ("none", "all", "lora_only")
# `--lora_target all`: every linear projection of the model except its output layer (for LLaMA:
# q/k/v/o_proj and gate/up/down_proj), which peft spells "all-linear".
ALL_LINEAR = "all"
# FastChat's train_lora.py defaults; applied when a LoRA run leaves them unset.
LORA_DEFAULTS = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Directory of the Hugging Face model to fine-tune (required)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the modeling code shipped with the model (only if you trust it)."}
    )
    padding_side: str | None = field(
        default=None,
        metadata={"help": "Tokenizer padding side; default right for sft, left for cls.", "choices": ["left", "right"]},
    )
    model_max_length: int = field(
        default=512, metadata={"help": "Longest sequence in tokens; longer samples are truncated (FastChat: 512; "
                          "LLaMA-Factory's --cutoff_len means the same)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Hugging Face cache directory (FastChat flag)."})
    flash_attn: bool = field(
        default=False,
        metadata={"help": "FastChat flag, accepted for compatibility: llama_hw.patches picks the attention kernel."},
    )
    task: str = field(
        default="sft",
        metadata={"help": "sft: conversations, causal LM loss on the replies; cls: text classification/regression.",
                  "choices": list(TASKS)},
    )
    num_labels: int | None = field(
        default=None,
        metadata={"help": "cls: number of classes (1 = regression); default: counted from the training labels."},
    )


@dataclass
class FinetuningArguments:
    finetuning_type: str | None = field(
        default=None,
        metadata={"help": "full, lora or qlora; default lora when a LoRA flag is given, else full.",
                  "choices": list(FINETUNING_TYPES)},
    )
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank (default 8; alias: --lora_rank)."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA scaling alpha (default 16)."})
    lora_dropout: float | None = field(default=None, metadata={"help": "LoRA dropout (default 0.05)."})
    lora_target: list[str] | None = field(
        default=None,
        metadata={"help": "Modules that get LoRA adapters, space or comma separated; 'all' (default) = every "
                          "linear projection (alias: --lora_target_modules)."},
    )
    lora_bias: str | None = field(
        default=None, metadata={"help": "Which biases to train with LoRA (default none).", "choices": list(LORA_BIASES)}
    )
    lora_weight_path: str | None = field(
        default=None, metadata={"help": "Start from this saved LoRA adapter instead of a fresh one."}
    )
    q_lora: bool = field(default=False, metadata={"help": "FastChat flag: same as --finetuning_type qlora."})

    def resolve(self) -> None:
        """Fill in the finetuning type and LoRA defaults the way FastChat's scripts imply them."""
        lora_flags = [name for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target", "lora_bias",
                                        "lora_weight_path") if getattr(self, name) not in (None, "")]
        if self.q_lora:
            if self.finetuning_type not in (None, "qlora"):
                raise UsageError(f"--q_lora True contradicts --finetuning_type {self.finetuning_type}; drop one")
            self.finetuning_type = "qlora"
        if self.finetuning_type is None:
            self.finetuning_type = "lora" if lora_flags else "full"
        if self.finetuning_type == "full":
            if lora_flags:
                raise UsageError(
                    f"--{lora_flags[0]} is a LoRA flag but --finetuning_type is full; use --finetuning_type lora"
                )
            return
        for name, default in LORA_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        self.lora_bias = self.lora_bias or "none"
        self.lora_target = split_names(self.lora_target) or [ALL_LINEAR]
        if self.lora_r <= 0:
            raise UsageError(f"--lora_r must be a positive integer, got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")

    @property
    def uses_lora(self) -> bool:
        return self.finetuning_type in ("lora", "qlora")


@dataclass
class RunArguments:
    device: str = field(
        default="auto", metadata={"help": "cpu, cuda, npu or auto (LLAMA_HW_DEVICE, else npu > cuda > cpu)."}
    )
    patches: str | None = field(
        default=None,
        metadata={"help": "Runtime patches: all, none or a comma-separated list of names (default: "
                          "LLAMA_HW_PATCHES, else all that apply)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that already holds checkpoints or a trained model."},
    )
    ignore_plan: bool = field(
        default=False,
        metadata={"help": "Train even when llama_hw.plan predicts more than 1.25x the device's memory."},
    )
    # FastChat's spelling of an fsdp_config key (transformers 5 removed the flag).
    fsdp_transformer_layer_cls_to_wrap: list[str] | None = field(
        default=None, metadata={"help": "FSDP: decoder layer class(es) sharded as units (default: the model's)."}
    )


def split_names(values: list[str] | None) -> list[str]:
    """['q_proj,v_proj', 'o_proj'] -> ['q_proj', 'v_proj', 'o_proj']: lists may be spaced or comma-separated."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]
