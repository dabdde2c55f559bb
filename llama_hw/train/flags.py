"""Command lines written for FastChat and transformers 4, translated for transformers 5.

FastChat's README commands (and years of scripts copied from them) use flags that transformers 5 renamed
or removed: `--evaluation_strategy`, `--warmup_ratio`, `--fsdp_transformer_layer_cls_to_wrap`, ... Parsing
them unchanged would end in `error: unrecognized arguments`. Each old flag is rewritten to its new
spelling (with a note), or dropped with a note when transformers 5 has no equivalent. LLaMA-Factory's
names for flags that mean the same thing here (`--lora_rank`, `--cutoff_len`) are translated the same way.
Works on argument tokens, so a YAML config file (turned into tokens) gets the same treatment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_hw.errors import UsageError

# old flag -> new flag; the value is kept as it is.
RENAMED = {
    "evaluation_strategy": "eval_strategy",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "lora_target_modules": "lora_target",  # FastChat train_lora.py
    # transformers 5 keeps the old names as deprecated aliases that warn (FutureWarning) on every run.
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}

# LLaMA-Factory's names for flags that mean exactly the same here: old flag -> flag here.
LLAMA_FACTORY = {
    "lora_rank": "lora_r",
    "cutoff_len": "model_max_length",
}

# Flags transformers 5 removed without a replacement that llama_hw needs: accepted and ignored.
IGNORED = {
    "logging_dir": "transformers 5 removed it; TensorBoard logs go under output_dir",
    "save_safetensors": "weights are always saved as safetensors",
    "include_tokens_per_second": "transformers 5 removed it",
    "half_precision_backend": "transformers 5 always uses torch autocast",
    "fp16_backend": "transformers 5 always uses torch autocast",
    "fp16_opt_level": "apex is not used",
    "sharded_ddp": "use --fsdp or --deepspeed",
    "tpu_num_cores": "TPUs are not supported",
    "use_ipex": "transformers 5 removed it",
    "torchdynamo": "use --torch_compile",
    "jit_mode_eval": "transformers 5 removed it",
    "ray_scope": "transformers 5 removed it",
    "use_legacy_prediction_loop": "transformers 5 removed it",
    "mp_parameters": "SageMaker model parallelism is not supported",
    "xpu_backend": "the backend picks the collective library",
    "push_to_hub_model_id": "use --hub_model_id",
    "push_to_hub_organization": "use --hub_model_id",
    "push_to_hub_token": "use --hub_token",
    "use_mps_device": "transformers 5 removed it",
    "dispatch_batches": "transformers 5 removed it",
    "split_batches": "transformers 5 removed it",
    "include_inputs_for_metrics": "transformers 5 removed it",
    "fsdp_min_num_params": "FSDP2 shards every decoder layer (set the class with --fsdp_transformer_layer_cls_to_wrap)",
    "preprocessed_path": "FastChat's T5 scripts only; conversations are tokenized and cached by llama_hw.data",
}

TRUE_WORDS = ("true", "1", "yes", "y", "t", "on")
FALSE_WORDS = ("false", "0", "no", "n", "f", "off")


@dataclass
class Translation:
    tokens: list[str]
    notes: list[str] = field(default_factory=list)  # one line per rewritten or dropped flag, for the log


def split_flags(tokens: list[str]) -> list[tuple[str | None, list[str]]]:
    """[(flag name or None for a positional token, [values...]), ...]; `--a=b` becomes ('a', ['b'])."""
    groups: list[tuple[str | None, list[str]]] = []
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            groups.append((name, [value] if eq else []))
        elif groups and groups[-1][0] is not None:
            groups[-1][1].append(token)
        else:
            groups.append((None, [token]))
    return groups


def as_bool(flag: str, values: list[str]) -> bool:
    if not values:
        return True  # a bare `--flag` means True, as in HfArgumentParser
    word = values[0].lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise UsageError(f"--{flag} expects True or False, got {values[0]!r}")


def translate(tokens: list[str]) -> Translation:
    """Rewrite old flags in `tokens` for this trainer's parser."""
    out: list[str] = []
    notes: list[str] = []
    groups = split_flags(tokens)
    explicit_steps = any(name == "warmup_steps" and values and is_positive(values[0]) for name, values in groups)
    for name, values in groups:
        # HfArgumentParser accepts --dashed-names too; look those up by their underscored spelling.
        key = name.replace("-", "_") if name is not None else None
        if name is None:
            out += values
        elif key in RENAMED:
            out += flag_tokens(RENAMED[key], values)
            notes.append(f"--{name} is now --{RENAMED[key]}")
        elif key in LLAMA_FACTORY:
            out += flag_tokens(LLAMA_FACTORY[key], values)
            notes.append(f"--{name} (LLaMA-Factory) is --{LLAMA_FACTORY[key]} here")
        elif key == "warmup_ratio":
            out += warmup_ratio_tokens(values, explicit_steps, notes)
        elif key == "group_by_length":
            if as_bool(name, values):
                out += ["--train_sampling_strategy", "group_by_length"]
                notes.append("--group_by_length True is now --train_sampling_strategy group_by_length")
        elif key in ("no_cuda", "use_cpu"):
            if as_bool(name, values):
                out += ["--device", "cpu"]
                notes.append(f"--{name} True is --device cpu here")
        elif key in IGNORED:
            notes.append(f"--{name} ignored: {IGNORED[key]}")
        else:
            out += flag_tokens(name, values)
    return Translation(out, notes)


def flag_tokens(name: str, values: list[str]) -> list[str]:
    """`--name value...`, with a single negative number joined as `--name=-1e-3`: argparse reads a token
    such as `-1e-3` as an option of its own (only plain `-1` / `-0.5` count as numbers there)."""
    if len(values) == 1 and values[0].startswith("-") and is_number(values[0]):
        return [f"--{name}={values[0]}"]
    return [f"--{name}", *values]


def is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def is_positive(value: str) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return False


def warmup_ratio_tokens(values: list[str], explicit_steps: bool, notes: list[str]) -> list[str]:
    """transformers 5 folded `--warmup_ratio r` into `--warmup_steps r` (a value below 1 is a ratio)."""
    if len(values) != 1:
        raise UsageError("--warmup_ratio expects one number, e.g. --warmup_ratio 0.03")
    try:
        ratio = float(values[0])
    except ValueError as err:
        raise UsageError(f"--warmup_ratio expects a number in [0, 1), got {values[0]!r}") from err
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"--warmup_ratio must be in [0, 1), got {ratio}")
    if explicit_steps:
        # transformers 4 let a positive --warmup_steps override the ratio; keep that meaning.
        notes.append("--warmup_ratio ignored: --warmup_steps is given and takes precedence (as in transformers 4)")
        return []
    notes.append(f"--warmup_ratio {values[0]} is now --warmup_steps {values[0]} (a value below 1 is a ratio)")
    return ["--warmup_steps", values[0]]
