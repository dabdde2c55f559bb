"""Helpers for the trainer and export tests: small command lines, logged losses, torchrun launches."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env
from transformers import TrainerCallback

# FastChat's README command for Vicuna-7B on 4 GPUs ("Fine-tuning Vicuna-7B with Local GPUs"), verbatim
# but for the three paths, which name things that do not exist here.
FASTCHAT_README_FLAGS = [
    "--bf16", "True",
    "--num_train_epochs", "3",
    "--per_device_train_batch_size", "2",
    "--per_device_eval_batch_size", "2",
    "--gradient_accumulation_steps", "16",
    "--evaluation_strategy", "no",
    "--save_strategy", "steps",
    "--save_steps", "1200",
    "--save_total_limit", "10",
    "--learning_rate", "2e-5",
    "--weight_decay", "0.",
    "--warmup_ratio", "0.03",
    "--lr_scheduler_type", "cosine",
    "--logging_steps", "1",
    "--fsdp", "full_shard auto_wrap",
    "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer",
    "--tf32", "True",
    "--model_max_length", "2048",
    "--gradient_checkpointing", "True",
    "--lazy_preprocess", "True",
]

# FastChat docs/training.md, "Fine-tuning using (Q)LoRA" (train_lora.py under deepspeed), verbatim but for paths.
FASTCHAT_QLORA_FLAGS = [
    "--lora_r", "8",
    "--lora_alpha", "16",
    "--lora_dropout", "0.05",
    "--bf16", "True",
    "--num_train_epochs", "3",
    "--per_device_train_batch_size", "1",
    "--per_device_eval_batch_size", "1",
    "--gradient_accumulation_steps", "1",
    "--evaluation_strategy", "no",
    "--save_strategy", "steps",
    "--save_steps", "1200",
    "--save_total_limit", "100",
    "--learning_rate", "2e-5",
    "--weight_decay", "0.",
    "--warmup_ratio", "0.03",
    "--lr_scheduler_type", "cosine",
    "--logging_steps", "1",
    "--tf32", "True",
    "--model_max_length", "2048",
    "--q_lora", "True",
]

# FastChat's playground/deepspeed_config_s2.json, which the QLoRA command passes as --deepspeed.
FASTCHAT_DEEPSPEED_S2 = {
    "zero_optimization": {
        "stage": 2,
        "offload_optimizer": {"device": "cpu"},
        "contiguous_gradients": True,
        "overlap_comm": True,
    },
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
}

# FastChat docs/training.md, "Fine-tuning Vicuna-7B with Local NPUs" (train.py), verbatim but for paths.
FASTCHAT_NPU_FLAGS = [
    "--fp16", "True",
    "--num_train_epochs", "3",
    "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "1",
    "--gradient_accumulation_steps", "1",
    "--evaluation_strategy", "no",
    "--save_strategy", "steps",
    "--save_steps", "1200",
    "--save_total_limit", "10",
    "--learning_rate", "2e-5",
    "--weight_decay", "0.",
    "--warmup_ratio", "0.03",
    "--lr_scheduler_type", "cosine",
    "--logging_steps", "1",
    "--fsdp", "full_shard auto_wrap",
    "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer",
    "--model_max_length", "2048",
    "--gradient_checkpointing", "True",
    "--lazy_preprocess", "True",
]


def small_run(model_dir: Path, data: Path, output_dir: Path, *extra: str) -> list[str]:
    """A short, logged, deterministic run of stories260K; `extra` flags override these."""
    return [
        "--model_name_or_path", str(model_dir),
        "--data_path", str(data),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-3",
        "--lr_scheduler_type", "constant",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--disable_tqdm", "True",
        "--seed", "0",
        *extra,
    ]


def file_hashes(directory: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `directory`: what a test compares before and after."""
    import hashlib

    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def logged_losses(output_dir: Path) -> list[float]:
    """The training loss of every logged step, from trainer_state.json."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_train(nproc: int, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node N -m llama_hw.train ARGV`, one CPU thread each."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "llama_hw.train", *argv,
    ]
    return subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def train_cli(argv: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m llama_hw.train ARGV` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "llama_hw.train", *argv], cwd=REPO, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def write_cls_data(directory: Path, train_records: int = 160, eval_records: int = 32) -> tuple[Path, Path]:
    """A small sentiment task the tiny model can learn: the adjective decides the label."""
    import random

    rng = random.Random(0)
    positive, negative = ["happy", "good", "fun", "nice", "kind"], ["sad", "bad", "angry", "mean", "ugly"]
    names = ["Lily", "Tom", "Sue", "Ben", "Max", "Amy"]

    def record() -> dict:
        label = rng.random() < 0.5
        word = rng.choice(positive if label else negative)
        return {"text": f"{rng.choice(names)} was very {word} today.", "label": "positive" if label else "negative"}

    train, evaluation = directory / "cls_train.jsonl", directory / "cls_eval.json"
    train.write_text("".join(json.dumps(record()) + "\n" for _ in range(train_records)))
    evaluation.write_text(json.dumps([record() for _ in range(eval_records)]))
    return train, evaluation


@pytest.fixture(scope="module")
def one_thread():
    """In-process training of the tiny model on one thread, as the subprocess tests run (subprocess_env):
    on 2 shared cores a second intra-op thread makes its small kernels several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CrashAtStep(TrainerCallback):
    """Stops a run by raising at the end of optimizer step `step`, as a crash would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
