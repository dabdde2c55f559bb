"""Build the Trainer a benchmark drives, from the same parts `llama_hw.train` builds its run with.

Backend selection, the DeepSpeed preset, the flag checks, TrainingArguments (with the backend's own
arguments), process-group start, tokenizer, data pipeline, model loading, LoRA, runtime patches and the
Trainer class are the trainer's (`llama_hw.train.session` and friends); what differs is only what a
benchmark needs: a model may be a preset with random weights instead of a checkpoint, data may be
synthetic, nothing is saved, and the loss is logged every step. `BenchMeter` (a TrainerCallback) and a
forward pre-hook do the measuring, so the numbers are those of the trainer's own loop.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_hw.bench.data import PADDINGS, BenchData, fixed_length_data, lengths_like, real_data
from llama_hw.bench.flops import FlopsModel
from llama_hw.bench.memory import check_fits
from llama_hw.bench.meter import BenchMeter
from llama_hw.bench.presets import PRESETS, ModelShape, ShapeOverrides, preset_shape
from llama_hw.bench.stability import StopRule
from llama_hw.bench.tokens import TokenCounter
from llama_hw.bench.work import WorkLayout, work_layout
from llama_hw.errors import UsageError
from llama_hw.models.hub import looks_like_hub_id, resolve_model_path
from llama_hw.utils import distributed

SAMPLINGS = ("sequential", "random", "group_by_length")
ZERO_STAGES = (0, 1, 2, 3)


@dataclass
class BenchSpec:
    """One benchmark run, as `bench run` flags describe it."""

    model: str  # a preset name or a model directory
    overrides: ShapeOverrides = field(default_factory=ShapeOverrides)
    seq_len: int = 2048
    micro_batch: int = 1
    grad_accum: int = 1
    steps: int | None = None  # None: until the median rate is stable (min_steps..max_steps, ci_bound)
    warmup: int = 2
    min_steps: int = 8
    max_steps: int = 60
    ci_bound: float = 0.05
    time_limit_s: float = 600.0
    padding: str = "dynamic"
    data_path: str | None = None
    template: str = "vicuna_v1.1"
    tokenizer: str | None = None
    lengths_from: str | None = None
    finetuning_type: str = "full"
    zero: int = 0
    precision: str | None = None  # None: the backend's fastest
    device: str | None = None
    patches: str | None = None  # None: LLAMA_HW_PATCHES, else all that apply
    gradient_checkpointing: bool = False
    sampling: str = "sequential"
    learning_rate: float = 2e-5
    seed: int = 0
    name: str | None = None

    @property
    def is_preset(self) -> bool:
        return self.model in PRESETS

    @property
    def stop_rule(self) -> StopRule:
        return StopRule(self.min_steps, self.max_steps, self.ci_bound, self.time_limit_s, self.steps)

    def check(self) -> None:
        """Flag values and combinations that cannot work, refused before anything loads."""
        for flag, value in (("--seq-len", self.seq_len), ("--micro-batch", self.micro_batch),
                            ("--grad-accum", self.grad_accum), ("--steps", self.steps),
                            ("--min-steps", self.min_steps), ("--max-steps", self.max_steps)):  # fmt: skip
            if value is not None and value <= 0:
                raise UsageError(f"{flag} must be a positive integer, got {value}")
        if self.steps is None and self.min_steps > self.max_steps:
            raise UsageError(f"--min-steps {self.min_steps} is more than --max-steps {self.max_steps}")
        if not 0 < self.ci_bound < 1:
            raise UsageError(f"--ci {self.ci_bound} must be a fraction between 0 and 1 (0.05 = +-5 %)")
        if self.time_limit_s <= 0:
            raise UsageError(f"--time-limit must be positive, got {self.time_limit_s}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.padding not in PADDINGS:
            raise UsageError(f"--padding {self.padding}: choose one of {', '.join(PADDINGS)}")
        if self.zero not in ZERO_STAGES:
            raise UsageError(f"--zero {self.zero}: choose a ZeRO stage, 0 (DDP) to 3")
        if self.sampling not in SAMPLINGS:
            raise UsageError(f"--sampling {self.sampling}: choose one of {', '.join(SAMPLINGS)}")
        if self.data_path and self.lengths_from:
            raise UsageError("--data_path trains on real data and --lengths-from on synthetic data; give one")
        if not self.is_preset:
            path = Path(self.model)
            if not path.is_dir() and not looks_like_hub_id(self.model):
                raise UsageError(f"--model {self.model}: neither a preset ({', '.join(PRESETS)}), a directory nor a "
                                 "Hub id (org/name)")  # fmt: skip
            if self.overrides.any():
                raise UsageError("--layers/--hidden/--heads/--kv-heads/--intermediate/--vocab shrink a preset; "
                                 f"--model {self.model} is a checkpoint directory")  # fmt: skip
        if self.zero and "LOCAL_RANK" not in os.environ:
            raise UsageError(f"--zero {self.zero} runs DeepSpeed, which needs a launched job (one process is fine): "
                             "python -m llama_hw.launch --nproc-per-node N --script benchmarks/bench.py -- run ...")
        if self.is_preset and (self.data_path or self.lengths_from) and not self.tokenizer:
            raise UsageError(f"--model {self.model} is a preset without a tokenizer: give --tokenizer DIR for "
                             f"{'--data_path' if self.data_path else '--lengths-from'}")  # fmt: skip

    def default_name(self, backend_name: str, precision: str, world_size: int, patches: list[str] = ()) -> str:
        """Every field that changes what is measured, so that `compare` never merges different runs:
        model (and shrinking), sequence length, micro batch x accumulation, padding, data, precision,
        fine-tuning type, ZeRO, gradient checkpointing, patches, seed, sampling and device."""
        model = self.model if self.is_preset else Path(self.model).name
        shrunk = "".join(f"-{key}{value}" for key, value in vars(self.overrides).items() if value is not None)
        batch = f"mb{self.micro_batch}" + (f"x{self.grad_accum}" if self.grad_accum > 1 else "")
        data = Path(self.data_path or self.lengths_from).stem if (self.data_path or self.lengths_from) else "synthetic"
        if self.lengths_from:
            data = f"lengths-of-{data}"
        parts = [f"{model}{shrunk}", f"seq{self.seq_len}", batch, self.padding, data, precision]
        if self.finetuning_type != "full":
            parts.append(self.finetuning_type)
        if self.zero:
            parts.append(f"zero{self.zero}")
        if self.gradient_checkpointing:
            parts.append("ckpt")
        parts.append("patches:" + ("+".join(patches) if patches else "none"))
        parts.append(f"seed{self.seed}")
        if self.sampling != "sequential":
            parts.append(self.sampling)
        return " ".join(parts + [f"{backend_name}x{world_size}"])


@dataclass
class BenchSession:
    spec: BenchSpec
    name: str
    backend: Any
    precision: str
    parallelism: Any
    trainer: Any
    meter: BenchMeter
    counter: TokenCounter
    shape: ModelShape
    flops: FlopsModel
    parameters: Any  # llama_hw.train.finetuning.ParameterCount
    patch_report: Any
    data: BenchData
    output_dir: Path
    notes: list[str] = field(default_factory=list)
    load_average_at_start: float | None = None  # the host's 1-minute load before this run started working
    layout: WorkLayout = field(default_factory=WorkLayout)
    peak: dict[str, Any] = field(default_factory=dict)  # llama_hw.env.peak_origin: tflops, source, ...

    def train(self):
        self.counter.attach(self.trainer.model)
        try:
            self.trainer.train()
        finally:
            self.counter.detach()
            shutil.rmtree(self.output_dir, ignore_errors=True)
        return self.meter.measurement


def train_config(spec: BenchSpec, precision: str, output_dir: Path):
    """The TrainConfig that `llama_hw.train` would parse for this run."""
    from llama_hw.data import DataArguments
    from llama_hw.train.arguments import FinetuningArguments, ModelArguments, RunArguments
    from llama_hw.train.config import TrainConfig, training_defaults

    finetuning = FinetuningArguments(finetuning_type=spec.finetuning_type)
    finetuning.resolve()
    training = training_defaults()  # as parsed from a command line: every field, the backend fills its own
    training.update({
        "output_dir": str(output_dir),
        "per_device_train_batch_size": spec.micro_batch,
        "gradient_accumulation_steps": spec.grad_accum,
        "max_steps": spec.warmup + spec.stop_rule.most_steps,  # BenchMeter stops earlier once stable
        "learning_rate": spec.learning_rate,
        "logging_steps": 1,  # the loss of every step, for parity
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,  # BenchMeter shows its own bar
        "seed": spec.seed,
        "train_sampling_strategy": spec.sampling,
        "activation_checkpointing": spec.gradient_checkpointing,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "deepspeed": f"zero{spec.zero}" if spec.zero else None,
    })
    return TrainConfig(
        model=ModelArguments(model_name_or_path=spec.model, model_max_length=spec.seq_len, padding_side="right"),
        data=DataArguments(data_path=spec.data_path or "", template=spec.template, packing=spec.padding == "packed"),
        finetuning=finetuning,
        run=RunArguments(device=spec.device or "auto", patches=spec.patches),
        training=training,
    )


def preset_model(shape: ModelShape, dtype, device, seed: int):
    """A LLaMA model of `shape`, built on `device`, with weights drawn on the host from `seed`.

    Matrices are N(0, initializer_range) as transformers initializes them, but drawn by a CPU generator
    one tensor at a time and copied over: every device type starts from the same weights, which loss
    parity between a GPU and an NPU run needs (device generators differ). Under ZeRO-3 the weights are
    partitioned while built and DeepSpeed initializes them on the device instead.
    """
    import torch
    from transformers import AutoModelForCausalLM, set_seed
    from transformers.integrations import is_deepspeed_zero3_enabled

    set_seed(seed)
    config = shape.llama_config()
    if is_deepspeed_zero3_enabled():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:  # norms keep their ones
                parameter.copy_(torch.randn(parameter.shape, generator=generator).mul_(config.initializer_range))
    return model


def build_data(spec: BenchSpec, tokenizer, vocab_size: int, world_size: int) -> BenchData:
    if spec.data_path:
        return real_data(spec.data_path, spec.template, tokenizer, spec.seq_len, spec.padding)
    samples = (spec.warmup + spec.stop_rule.most_steps) * spec.micro_batch * spec.grad_accum * world_size
    if spec.lengths_from:
        source = real_data(spec.lengths_from, spec.template, tokenizer, spec.seq_len, "dynamic")
        return lengths_like(source.dataset, samples, spec.seq_len, vocab_size, spec.seed, spec.padding)
    return fixed_length_data(samples, spec.seq_len, vocab_size, spec.seed, spec.padding)


def build_bench_session(spec: BenchSpec, progress: bool = True) -> BenchSession:
    """Everything up to the first step. Raises UsageError / DataError / DeviceUnavailable on bad input."""
    from llama_hw.backends import select_backend
    from llama_hw.env import peak_origin

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    spec.check()
    backend = select_backend(spec.device).backend
    precision = spec.precision or backend.default_precision()
    backend.check_precision(precision)
    # before anything is allocated: a CPU GEMM probe must not share the cores with this run's own work
    peak = peak_origin(backend, precision)
    output_dir = Path(tempfile.mkdtemp(prefix="llama_hw_bench_"))  # Trainer wants one; nothing is saved
    try:
        session = _build(spec, backend, precision, output_dir, progress)
    except BaseException:
        shutil.rmtree(output_dir, ignore_errors=True)
        raise
    session.load_average_at_start = load
    session.peak = peak
    return session


def _build(spec: BenchSpec, backend, precision: str, output_dir: Path, progress: bool) -> BenchSession:
    import torch

    from transformers.trainer_callback import PrinterCallback

    from llama_hw.data import load_tokenizer
    from llama_hw.patches import apply_patches
    from llama_hw.train.deepspeed import init_deepspeed_distributed, load_deepspeed_config
    from llama_hw.train.finetuning import apply_finetuning, count_parameters
    from llama_hw.train.model import compute_dtype, fit_embeddings_to_tokenizer, load_config, load_training_model
    from llama_hw.train.session import Parallelism, check_combinations, training_arguments
    from llama_hw.train.trainer import LlamaHwTrainer

    config = train_config(spec, precision, output_dir)
    deepspeed = load_deepspeed_config(config.training["deepspeed"])
    world_size = distributed.world_size()
    parallelism = Parallelism(world_size, deepspeed)
    check_combinations(config, backend, deepspeed, None)
    notes: list[str] = []

    apply_patches(None, backend, mode="train", selection=spec.patches)  # process-level, before DeepSpeed starts
    distributed.init_process_group(backend)
    if deepspeed and world_size > 1:
        init_deepspeed_distributed(backend)
    args = training_arguments(config, backend, parallelism, notes)

    model_dir = None if spec.is_preset else resolve_model_path(spec.model, flag="--model")  # a Hub id: its cache
    tokenizer_dir = spec.tokenizer or (None if spec.is_preset else str(model_dir))
    tokenizer = load_tokenizer(tokenizer_dir, model_max_length=spec.seq_len) if tokenizer_dir else None
    dtype = compute_dtype(args.fp16, args.bf16)
    if spec.is_preset:
        shape = preset_shape(spec.model, spec.overrides)
        check_fits(spec, shape, backend, precision, parallelism)
        if tokenizer is not None and len(tokenizer) > shape.vocab_size:
            raise UsageError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary of "
                             f"{shape.vocab_size}; raise --vocab")  # fmt: skip
        model_dtype = torch.float32 if spec.finetuning_type == "full" else dtype  # full: fp32 master weights
        model = preset_model(shape, model_dtype, backend.device(distributed.local_rank()), spec.seed)
    else:
        shape = ModelShape.from_config(load_config(config.model, model_dir))
        check_fits(spec, shape, backend, precision, parallelism)
        model = load_training_model(config.model, model_dir, finetuning_type=spec.finetuning_type,
                                    dtype=dtype, backend=backend, local_rank=distributed.local_rank(),
                                    pad_token_id=tokenizer.pad_token_id if tokenizer else None)  # fmt: skip
        if tokenizer is not None:
            fit_embeddings_to_tokenizer(model, tokenizer)
            shape = ModelShape.from_config(model.config)
    with args.main_process_first(local=False, desc="preparing the benchmark data"):
        data = build_data(spec, tokenizer, shape.vocab_size, world_size)
    base_parameters = count_parameters(model).total
    model = apply_finetuning(model, config.finetuning, task="sft", gradient_checkpointing=spec.gradient_checkpointing)
    parameters = count_parameters(model)
    adapters = parameters.total - base_parameters
    flops = FlopsModel.for_shape(shape, adapter_parameters=adapters, full=spec.finetuning_type == "full")
    patch_report = apply_patches(model, backend, mode="train", selection=spec.patches, training_args=args)

    layout = work_layout(patch_report, model, shape.num_attention_heads * shape.head_dim)
    counter = TokenCounter(layout)
    meter = BenchMeter(backend, counter, spec.warmup, spec.stop_rule, progress=progress)
    trainer = LlamaHwTrainer(model=model, args=args, train_dataset=data.dataset, data_collator=data.collator,
                             processing_class=tokenizer, callbacks=[meter])  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # the per-step log dicts; BenchMeter reports instead
    model_patches = [o.name for o in patch_report.outcomes if o.status == "applied" and o.scope == "model"]
    name = spec.name or spec.default_name(backend.name, precision, world_size, model_patches)
    return BenchSession(spec=spec, name=name, backend=backend, precision=precision, parallelism=parallelism,
                        trainer=trainer, meter=meter, counter=counter, shape=shape, flops=flops,
                        parameters=parameters, patch_report=patch_report, data=data, output_dir=output_dir,
                        notes=notes, layout=layout)  # fmt: skip

