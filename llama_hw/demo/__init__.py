"""The embedded demo that `python -m llama_hw.launch` runs with no arguments.

Its assets ship inside the package (written by `python -m llama_hw.demo.generate`; no downloads):
- `data/train.json`, `data/heldout.json`: ShareGPT conversations of letter puzzles ("reverse: k f a m" ->
  "m a f k", "upper: q u i t" -> "Q U I T"); the held-out questions never occur in training.
- `model/config.json`: a 3-layer, 128-wide Llama (0.84M parameters) that starts from random weights
  (`write_initial_model`, seeded);
- `model/tokenizer.model`: a 421-piece SentencePiece BPE tokenizer trained on the data set's text.
`DEMO` holds the trainer settings measured to learn the task in about a minute on two CPU cores
(800 steps, 53 s of training; held-out exact match 0% -> 89%); `llama_hw.demo.evaluate` scores it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
SEED = 0
# Vicuna's format with a two-word system prompt ("A chat."). With vicuna_v1.1's 30-token system prompt a
# 2-layer model stayed on its loss plateau until step ~400 and scored 21% after 1000 steps; with this
# template it scored 95.5% and 100% (seeds 0 and 1), and each step costs half as much (measured here).
TEMPLATE = "airoboros_v2"
DATA_DIR = DEMO_DIR / "data"
MODEL_DIR = DEMO_DIR / "model"
TRAIN_DATA = DATA_DIR / "train.json"
HELDOUT_DATA = DATA_DIR / "heldout.json"
CONFIG_FILE = MODEL_DIR / "config.json"
TOKENIZER_FILE = MODEL_DIR / "tokenizer.model"


@dataclass(frozen=True)
class DemoSettings:
    """Trainer flags of the demo run (FastChat / TrainingArguments names)."""

    template: str = TEMPLATE
    max_steps: int = 800
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 32
    model_max_length: int = 128
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 20
    logging_steps: int = 50
    seed: int = SEED
    output_dir: str = "output/demo"

    def trainer_args(self, model_dir: str | Path, output_dir: str | Path | None = None) -> list[str]:
        """`python -m llama_hw.train` arguments that train the model in `model_dir` on the demo data."""
        return [
            "--model_name_or_path", str(model_dir),
            "--data_path", str(TRAIN_DATA),
            "--template", self.template,
            "--model_max_length", str(self.model_max_length),
            "--output_dir", str(output_dir or self.output_dir),
            "--overwrite_output_dir", "True",
            "--max_steps", str(self.max_steps),
            "--per_device_train_batch_size", str(self.per_device_train_batch_size),
            "--learning_rate", str(self.learning_rate),
            "--lr_scheduler_type", self.lr_scheduler_type,
            "--warmup_steps", str(self.warmup_steps),
            "--logging_steps", str(self.logging_steps),
            # Trainer logs the tokens it has seen (padding included) and train_tokens_per_second.
            "--include_num_input_tokens_seen", "True",
            "--save_strategy", "no",
            "--report_to", "none",
            "--seed", str(self.seed),
        ]


DEMO = DemoSettings()


def write_initial_model(directory: str | Path, seed: int = SEED) -> Path:
    """Save the demo's randomly initialised Llama (weights from `seed`) and its tokenizer to `directory`."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    directory = Path(directory)
    config = AutoConfig.from_pretrained(MODEL_DIR)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)  # safetensors
    shutil.copy2(TOKENIZER_FILE, directory / TOKENIZER_FILE.name)
    return directory


def training_speed(output_dir: str | Path, world_size: int) -> str | None:
    """"N steps in S s, T tokens/s/device" from the trainer's final log, or None when it has none."""
    state_file = Path(output_dir) / "trainer_state.json"
    if not state_file.is_file():
        return None
    history = json.loads(state_file.read_text(encoding="utf-8")).get("log_history", [])
    timed = [entry for entry in history if "train_tokens_per_second" in entry]
    if not timed:
        return None
    last = timed[-1]
    per_device = last["train_tokens_per_second"] / max(1, world_size)
    return (f"{last['step']} steps in {last['train_runtime']:.1f} s, {per_device:,.0f} tokens/s/device "
            f"(padding included; {world_size} device(s))")
