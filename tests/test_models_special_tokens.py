"""Training prints no PAD/BOS/EOS warning: the pad token our tokenizer loader picks is recorded in the model.

transformers' Trainer compares the tokenizer's special tokens with the model's config and generation
config and warns once per rank when it has to align them; load_tokenizer chooses pad = unk (FastChat's
rule) for LLaMA tokenizers that have no pad, so the model loader writes that id into both configs.
"""

from __future__ import annotations

import json

import pytest
from train_support import one_thread, small_run, train_cli  # noqa: F401 - one_thread is a fixture

from llama_hw.backends import select_backend
from llama_hw.data import load_tokenizer
from llama_hw.train.arguments import ModelArguments
from llama_hw.train.model import load_training_model

WARNING = "PAD/BOS/EOS"


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_loaded_model_agrees_with_the_tokenizer(finetuning_type, stories260k_dir, capfd, one_thread):
    import torch
    from transformers.trainer_utils import align_special_tokens

    tokenizer = load_tokenizer(str(stories260k_dir), model_max_length=64)
    model = load_training_model(ModelArguments(model_name_or_path=str(stories260k_dir)), stories260k_dir,
                                finetuning_type=finetuning_type, dtype=torch.float32,
                                backend=select_backend("cpu").backend, local_rank=0,
                                pad_token_id=tokenizer.pad_token_id)
    capfd.readouterr()
    align_special_tokens(model, tokenizer)  # what Trainer.__init__ runs on every rank
    out, err = capfd.readouterr()
    assert WARNING not in out + err
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id == 0
    # Built without a padding_idx: the pad (unk) embedding row still trains, as it did before.
    assert model.get_input_embeddings().padding_idx is None


@pytest.mark.slow  # a training subprocess
def test_training_output_has_no_special_token_warning(stories260k_dir, dummy_conversations, tmp_path):
    out = tmp_path / "out"
    run = train_cli(small_run(stories260k_dir, dummy_conversations, out, "--max_steps", "1",
                              "--model_max_length", "256", "--finetuning_type", "lora"))
    assert run.returncode == 0, run.stderr
    assert WARNING not in run.stdout + run.stderr
    saved = json.loads((out / "llama_hw.json").read_text())
    assert saved["finetuning_type"] == "lora"
