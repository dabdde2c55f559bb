"""`python -m llama_hw.export`: a merged LoRA model computes what base + adapter computed."""

from __future__ import annotations

import warnings

import pytest
import torch
from train_support import one_thread, small_run, write_cls_data

from llama_hw.errors import run_cli
from llama_hw.export.recipe import main as export_main
from llama_hw.models import read_run_metadata
from llama_hw.train.recipe import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "A chat between a curious user and an artificial intelligence assistant. USER: Hi! ASSISTANT: Hello"


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, stories260k_dir, dummy_conversations, one_thread):
    out = tmp_path_factory.mktemp("export") / "adapter"
    argv = small_run(stories260k_dir, dummy_conversations, out, "--max_steps", "10", "--learning_rate", "1e-2",
                     "--finetuning_type", "lora", "--lora_target", "q_proj,v_proj,down_proj")
    assert run_cli(train_main, argv) == 0
    return out


def tokens(model_dir):
    from llama_hw.data import load_tokenizer

    return load_tokenizer(str(model_dir))(TEXT, return_tensors="pt")


def test_merged_model_reproduces_the_adapter_logits(sft_adapter, stories260k_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = tmp_path / "merged"
    assert run_cli(export_main, ["--base", str(stories260k_dir), "--adapter", str(sft_adapter),
                                 "--out", str(merged_dir)]) == 0
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    metadata = read_run_metadata(merged_dir)
    assert metadata["template"] == "vicuna_v1.1" and metadata["finetuning_type"] == "full"
    assert metadata["merged_from"] == str(sft_adapter.resolve())

    batch = tokens(stories260k_dir)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(stories260k_dir)
        base_logits = base(**batch).logits
        adapted = PeftModel.from_pretrained(base, sft_adapter)(**batch).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)(**batch).logits
    assert not torch.allclose(adapted, base_logits, atol=1e-2)  # the adapter changes the model
    assert torch.allclose(merged, adapted, atol=1e-4)


def test_merge_finds_the_base_model_the_adapter_records(sft_adapter, tmp_path):
    merged_dir = tmp_path / "merged"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_cli(export_main, ["--adapter", str(sft_adapter), "--out", str(merged_dir), "--dtype", "fp16"]) == 0
    # peft's own use of a deprecated transformers attribute is nothing the user can act on
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    from safetensors.torch import load_file

    assert {tensor.dtype for tensor in load_file(merged_dir / "model.safetensors").values()} == {torch.float16}


def test_merged_classifier_reproduces_the_adapter(tmp_path, stories260k_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    train, _evaluation = write_cls_data(tmp_path)
    adapter = tmp_path / "cls_adapter"
    argv = small_run(stories260k_dir, train, adapter, "--task", "cls", "--finetuning_type", "lora",
                     "--max_steps", "10", "--learning_rate", "1e-2")
    assert run_cli(train_main, argv) == 0
    merged_dir = tmp_path / "cls_merged"
    assert run_cli(export_main, ["--adapter", str(adapter), "--out", str(merged_dir)]) == 0

    batch = tokens(stories260k_dir)
    with torch.no_grad():
        merged = AutoModelForSequenceClassification.from_pretrained(merged_dir)
        assert merged.config.id2label == {0: "negative", 1: "positive"}
        base = AutoModelForSequenceClassification.from_pretrained(
            stories260k_dir, num_labels=2, pad_token_id=merged.config.pad_token_id)
        adapted = PeftModel.from_pretrained(base, adapter)(**batch).logits
        assert torch.allclose(merged(**batch).logits, adapted, atol=1e-4)


def test_export_refuses_to_overwrite_and_non_adapters(sft_adapter, stories260k_dir, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    assert run_cli(export_main, ["--adapter", str(sft_adapter), "--out", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli(export_main, ["--base", str(stories260k_dir), "--adapter", str(stories260k_dir),
                                 "--out", str(tmp_path / "x")]) == 2
    assert "--adapter" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
