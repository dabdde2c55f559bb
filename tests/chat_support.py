"""Helpers for the chat tests: a LoRA adapter trained on the spot, and the CLI as a user runs it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env
from llama_hw.models import write_run_metadata

PROMPT = "Once upon a time"
BASE_CONTINUATION = "there was a little girl named Lily"
# A tiny data set that the adapter learns by heart: greedy decoding from PROMPT then tells of Max.
ADAPTER_STORIES = [
    "Once upon a time, there was a big brown dog named Max. Max liked to run in the sun.",
    "Once upon a time, there was a big brown dog named Max. Max had a red ball.",
    "Once upon a time, there was a big brown dog named Max. Max was happy.",
]
ADAPTER_CONTINUATION = "there was a big brown dog named Max"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """For test modules that import it: in-process training and generation with a 260K-parameter model
    gain nothing from more threads, which on a busy machine only contend with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sentencepiece_ids(model_dir: Path, text: str) -> list[int]:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    return [processor.bos_id(), *processor.encode(text), processor.eos_id()]


def train_lora_adapter(base_dir: Path, out_dir: Path, steps: int = 40, template: str = "raw") -> Path:
    """Fine-tune a LoRA adapter on ADAPTER_STORIES with a plain torch loop; save it as the trainer would."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batches = [torch.tensor([sentencepiece_ids(base_dir, story)]) for story in ADAPTER_STORIES]
    model.train()
    for step in range(steps):
        ids = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(out_dir))
    write_run_metadata(out_dir, template=template, base_model=base_dir, finetuning_type="lora")
    return out_dir


def save_mismatched_adapter(out_dir: Path, **config_overrides) -> Path:
    """A LoRA adapter for a Llama of another shape than stories260K."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=5,
                 num_attention_heads=8, num_key_value_heads=4)
    shape.update(config_overrides)
    model = get_peft_model(LlamaForCausalLM(LlamaConfig(**shape)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(str(out_dir))
    return out_dir


def chat_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "llama_hw.chat", *args]


def chat_env() -> dict[str, str]:
    env = subprocess_env(TERM="dumb", COLUMNS="200")
    env.pop("LLAMA_HW_DEVICE", None)
    return env

