"""Build a training run from a TrainConfig, run it, save it: the API behind `python -m llama_hw.train`.

    config = parse_args(argv)                 # llama_hw.train.config
    session = build_session(config)           # backend, checks, patches, data, model, Trainer
    result = session.run()                    # resume, train, save atomically, predict (cls)

Everything a user can get wrong is checked before anything heavy (model loading, tokenization) starts.
The launcher and the benchmark build on `build_session` (extra Trainer callbacks go in `callbacks`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_hw.backends import Backend, select_backend
from llama_hw.errors import UsageError
from llama_hw.train.checkpointing import check_output_dir, clear_previous_run, resolve_resume
from llama_hw.train.checks import check_lora_targets
from llama_hw.train.config import TrainConfig, training_defaults
from llama_hw.train.deepspeed import init_deepspeed_distributed, load_deepspeed_config, offloads, zero_stage
from llama_hw.train.finetuning import ParameterCount, apply_finetuning, count_parameters
from llama_hw.train.fsdp import FsdpPlan, fsdp_plan
from llama_hw.train.model import (
    check_model_dir,
    check_qlora_environment,
    compute_dtype,
    fit_embeddings_to_tokenizer,
    load_training_model,
)
from llama_hw.train.logs import logger
from llama_hw.train.rerun import RECORD_FIELD, finished_run, training_record
from llama_hw.models.hub import model_reference
from llama_hw.models.loading import check_adapter_dir
from llama_hw.utils import distributed


@dataclass
class Parallelism:
    """How the run is spread over processes: DDP, DeepSpeed ZeRO or FSDP2 (and which FSDP engine)."""

    world_size: int
    deepspeed: dict[str, Any] | None = None
    fsdp: FsdpPlan | None = None
    fsdp_at_load: bool = False  # transformers shards while loading (Trainer on the host CPU)

    def describe(self) -> str:
        if self.deepspeed:
            stage = zero_stage(self.deepspeed)
            return f"DeepSpeed ZeRO-{stage}" + (" with offload" if offloads(self.deepspeed) else "")
        if self.fsdp:
            engine = "transformers, sharded at load" if self.fsdp_at_load else "accelerate"
            return f"FSDP2 ({engine})"
        return "DDP" if self.world_size > 1 else "single process"


@dataclass
class TrainingSession:
    config: TrainConfig
    backend: Backend
    backend_reason: str
    parallelism: Parallelism
    trainer: Any  # LlamaHwTrainer
    tokenizer: Any
    model_dir: Path
    resume_from: Path | None
    parameters: ParameterCount
    patch_report: Any
    data: Any  # SFTData from llama_hw.data, or ClsData
    memory_plan: Any = None  # llama_hw.plan.train_check.TrainingPlan: the predicted peak memory
    overwrite: bool = False  # --overwrite_output_dir, unless this is an elastic restart
    notes: list[str] = field(default_factory=list)

    @property
    def output_dir(self) -> Path:
        return Path(self.trainer.args.output_dir)

    @property
    def is_main(self) -> bool:
        return self.trainer.args.process_index == 0

    def banner(self) -> str:
        args = self.trainer.args
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
        lines = [
            f"llama_hw train: {self.backend.name} ({self.backend_reason}), {self.parallelism.world_size} "
            f"process(es), {precision}, {self.parallelism.describe()}",
            f"  model: {self.model_dir} ({self.config.model.task}, {self.config.finetuning.finetuning_type}): "
            f"{self.parameters.describe()}",
            f"  data: {describe_data(self.data)}",
            f"  output: {self.output_dir}; "
            + (f"resuming from {self.resume_from}" if self.resume_from else "starting fresh"),
        ]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(self.patch_report.render())
        return "\n".join(lines)

    def metadata(self, result) -> dict[str, Any]:
        """What `llama_hw.json` records: chat reads the template and the base model from it."""
        from llama_hw import __version__

        sft = self.config.model.task == "sft"
        fields = {
            "template": self.config.data.template if sft else "raw",
            "base_model": model_reference(self.config.model.model_name_or_path, self.model_dir),
            "finetuning_type": self.config.finetuning.finetuning_type,
            "task": self.config.model.task,
            "model_max_length": self.config.model.model_max_length,
            "global_step": result.global_step,
            # None when this call trained no step (resumed from the last step's checkpoint)
            "train_loss": result.training_loss if result.global_step > self.resumed_step() else None,
            "device": self.backend.name,
            "world_size": self.parallelism.world_size,
            "parallelism": self.parallelism.describe(),
            "llama_hw_version": __version__,
            RECORD_FIELD: training_record(self.config),  # what a re-run of the command is compared with
        }
        if self.memory_plan is not None:  # the planner's prediction beside what this run really held
            fields["memory_plan"] = self.memory_plan.record(self.backend.memory_stats().peak_allocated_bytes)
        if not sft:  # export rebuilds the classification head of a LoRA run from these
            fields.update(labels=self.data.labels.config_fields(), pad_token_id=self.tokenizer.pad_token_id)
        return fields

    def resumed_step(self) -> int:
        if self.resume_from is None:
            return 0
        return int(json.loads((self.resume_from / "trainer_state.json").read_text()).get("global_step", 0))

    def train(self):
        """Train (resuming when there is a checkpoint to resume from); returns Trainer's TrainOutput."""
        if self.is_main and self.resume_from is None:
            clear_previous_run(self.output_dir, overwrite=self.overwrite)
        self.trainer.accelerator.wait_for_everyone()
        return self.trainer.train(resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)

    def run(self):
        """Train, save the model atomically, and for `--task cls --do_predict` write predictions."""
        if self.is_main:
            logger.info(self.banner())
        result = self.train()
        self.trainer.save_final(self.metadata(result))
        if self.config.model.task == "cls" and self.trainer.args.do_predict:
            from llama_hw.train.cls_task import predict_and_write

            predict_and_write(self.trainer, self.data, self.output_dir / "predictions.jsonl", self.is_main)
        return result


def describe_data(data) -> str:
    """One line about the training data: llama_hw.data's DataStats summary, or the cls task's counts."""
    stats = data.stats
    if hasattr(stats, "summary"):
        return stats.summary()
    return ", ".join(f"{key} {value}" for key, value in stats.items())


def check_combinations(config: TrainConfig, backend: Backend, deepspeed: dict | None, fsdp: FsdpPlan | None) -> None:
    """Flag combinations that cannot work, refused before anything loads."""
    finetuning = config.finetuning.finetuning_type
    if deepspeed and fsdp:
        raise UsageError("--deepspeed and --fsdp both shard the model; choose one")
    if finetuning == "qlora":
        if zero_stage(deepspeed) == 3:
            raise UsageError("--finetuning_type qlora does not work with ZeRO-3 (4-bit weights cannot be "
                             "partitioned); use --deepspeed zero2 or --finetuning_type lora")
        if fsdp:
            raise UsageError("--finetuning_type qlora does not work with --fsdp; use --deepspeed zero2")
        check_qlora_environment(backend)
    training = config.training
    for precision in ("bf16", "fp16"):
        if training.get(precision) or training.get(f"{precision}_full_eval"):
            backend.check_precision(precision)
    if config.finetuning.lora_weight_path:
        check_adapter_dir(config.finetuning.lora_weight_path, flag="--lora_weight_path")
    if config.model.task == "cls" and training.get("do_predict") and not config.data.eval_data_path:
        raise UsageError("--do_predict needs --eval_data_path: the records to predict")


def training_arguments(config: TrainConfig, backend: Backend, parallelism: Parallelism, notes: list[str]):
    """TrainingArguments from the user's flags plus what the backend needs (the user's values win)."""
    from transformers import TrainingArguments
    from transformers.utils import is_torch_tf32_available

    kwargs = dict(config.training)
    defaults = training_defaults()
    for key, value in backend.trainer_arguments(parallelism.world_size).items():
        if kwargs.get(key) == defaults.get(key):
            kwargs[key] = value
    if kwargs.get("tf32") and not is_torch_tf32_available():
        notes.append(f"--tf32 True ignored: TF32 needs an NVIDIA GPU of compute capability 8.0+, this run "
                     f"uses {backend.name}")
        kwargs["tf32"] = None
    if kwargs.get("remove_unused_columns") == defaults["remove_unused_columns"]:
        kwargs["remove_unused_columns"] = False  # the data pipeline's collator decides what the model sees
    if kwargs.get("ddp_find_unused_parameters") is None:
        # Every weight of a LLaMA model (and every LoRA adapter) gets a gradient each step; Trainer's
        # default (True unless checkpointing) makes DDP walk the autograd graph after every backward,
        # and under torchrun accelerate wraps even a single process in DDP.
        kwargs["ddp_find_unused_parameters"] = False
    kwargs["deepspeed"] = parallelism.deepspeed
    kwargs.update(fsdp=None, fsdp_config=None)
    if parallelism.fsdp is not None and not parallelism.fsdp_at_load:
        kwargs.update(parallelism.fsdp.trainer_arguments())
    if parallelism.fsdp_at_load:
        # Trainer refuses to checkpoint the optimizer of a model transformers sharded at load time;
        # LlamaHwTrainer saves it (and the scheduler and RNG states) itself.
        kwargs["save_only_model"] = True
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err).strip().splitlines()[0]) from err


def build_data(config: TrainConfig, tokenizer):
    if config.model.task == "cls":
        from llama_hw.train.cls_task import build_cls_data

        return build_cls_data(
            config.data.data_path, config.data.eval_data_path, tokenizer,
            max_length=config.model.model_max_length, num_labels=config.model.num_labels,
            pad_to_multiple_of=getattr(config.data, "pad_to_multiple_of", None),
        )
    from llama_hw.data import build_sft_data

    return build_sft_data(config.data, tokenizer, config.model.model_max_length)


def overwrite_requested(config: TrainConfig) -> bool:
    """--overwrite_output_dir, which an elastic restart ignores: it continues the run it restarts."""
    return config.run.overwrite_output_dir and distributed.restart_count() == 0


def build_session(config: TrainConfig, callbacks: list | tuple = ()) -> TrainingSession:
    """Everything up to the first training step. Raises UsageError / DataError / DeviceUnavailable.

    On an output_dir holding this run's finished model it raises UsageError too (`python -m
    llama_hw.train` asks `finished_run` first and exits 0 instead).
    """
    from llama_hw.data import load_tokenizer
    from llama_hw.patches import apply_patches
    from llama_hw.train.trainer import LlamaHwTrainer

    finished = finished_run(config, overwrite=overwrite_requested(config))
    if finished:
        raise UsageError(finished)
    selection = select_backend(config.run.device)
    backend = selection.backend
    notes = list(config.notes)
    model_dir = check_model_dir(config.model.model_name_or_path, cache_dir=config.model.cache_dir)
    deepspeed = load_deepspeed_config(config.training.get("deepspeed"))
    fsdp = fsdp_plan(config.training.get("fsdp"), config.training.get("fsdp_config"),
                     config.run.fsdp_transformer_layer_cls_to_wrap)
    check_combinations(config, backend, deepspeed, fsdp)
    check_lora_targets(config, model_dir)
    world_size = distributed.world_size()
    if fsdp is not None and world_size == 1:
        notes.append("--fsdp ignored: sharding needs more than one process (start with llama_hw.launch or torchrun)")
        fsdp = None
    backend_wants_host = backend.trainer_arguments(world_size).get("use_cpu", False)
    parallelism = Parallelism(world_size, deepspeed, fsdp, fsdp_at_load=fsdp is not None and backend_wants_host)

    output_dir = Path(config.training["output_dir"])
    overwrite = overwrite_requested(config)
    resume_option = config.training.get("resume_from_checkpoint")
    if distributed.restart_count() > 0:
        # The elastic agent restarted the workers after a failure: continue this run, never start over.
        notes.append(f"elastic restart {distributed.restart_count()}: resuming from the latest complete checkpoint")
        resume_option, overwrite = "auto", False
    resume_from = resolve_resume(resume_option, output_dir, overwrite=overwrite)
    check_output_dir(output_dir, resume_from, overwrite=overwrite)

    # Process-level patches first: on Ascend they prepare DeepSpeed before it starts.
    apply_patches(None, backend, mode="train", selection=config.run.patches)
    distributed.init_process_group(backend)
    if deepspeed and world_size > 1:
        init_deepspeed_distributed(backend)
    args = training_arguments(config, backend, parallelism, notes)

    tokenizer = load_tokenizer(str(model_dir), model_max_length=config.model.model_max_length,
                               padding_side=config.model.padding_side,
                               trust_remote_code=config.model.trust_remote_code)
    with args.main_process_first(local=False, desc="tokenizing the data"):
        data = build_data(config, tokenizer)
    memory_plan = predict_memory(config, backend, parallelism, model_dir, data, args)
    if memory_plan is not None:
        notes.append(memory_plan.describe())
        memory_plan.check(ignore=config.run.ignore_plan)

    backend.manual_seed(args.seed)  # LoRA adapters are initialised while loading: the same run, the same adapters

    model = load_training_model(
        config.model, model_dir,
        finetuning_type=config.finetuning.finetuning_type,
        dtype=compute_dtype(args.fp16, args.bf16),
        backend=backend,
        local_rank=distributed.local_rank(),
        labels=data.labels.config_fields() if config.model.task == "cls" else None,
        distributed_config=fsdp.load_time_config(world_size) if parallelism.fsdp_at_load else None,
        pad_token_id=tokenizer.pad_token_id,
    )
    if not parallelism.fsdp_at_load:
        fit_embeddings_to_tokenizer(model, tokenizer)
    model = apply_finetuning(model, config.finetuning, task=config.model.task,
                             gradient_checkpointing=bool(args.activation_checkpointing))
    patch_report = apply_patches(model, backend, mode="train", selection=config.run.patches, training_args=args)

    compute_metrics = None
    if config.model.task == "cls":
        from llama_hw.train.cls_task import metrics_function

        compute_metrics = metrics_function(data.labels)
    trainer = LlamaHwTrainer(
        model=model,
        args=args,
        train_dataset=data.train_dataset,
        eval_dataset=data.eval_dataset,
        data_collator=data.data_collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=list(callbacks) + list(getattr(data, "callbacks", ())),  # e.g. text windows' epoch
    )
    return TrainingSession(
        config=config, backend=backend, backend_reason=selection.reason, parallelism=parallelism,
        trainer=trainer, tokenizer=tokenizer, model_dir=model_dir, resume_from=resume_from,
        parameters=count_parameters(model), patch_report=patch_report, data=data, overwrite=overwrite, notes=notes,
        memory_plan=memory_plan,
    )


def predict_memory(config: TrainConfig, backend: Backend, parallelism: Parallelism, model_dir: Path, data, args):
    """llama_hw.plan's prediction for these flags (None for models it does not describe, e.g. cls heads)."""
    from llama_hw.patches import describe_patches
    from llama_hw.plan.train_check import plan_training

    if config.model.task != "sft":
        return None
    chunked = any(patch["name"] == "chunked_cross_entropy" and patch["status"] == "applies"
                  for patch in describe_patches(backend, "llama", "train", selection=config.run.patches,
                                                training_args=args))  # fmt: skip
    return plan_training(config, backend, parallelism, model_dir, data, chunked_head=chunked)
