"""One-process training on stories260K and FastChat's dummy conversations: full, LoRA, resume, cls."""

from __future__ import annotations

import json

import pytest
import torch
from train_support import (
    FASTCHAT_README_FLAGS,
    CrashAtStep,
    logged_losses,
    one_thread,
    small_run,
    write_cls_data,
)

from llama_hw.backends import get_backend
from llama_hw.errors import run_cli
from llama_hw.models import METADATA_FILE, load_model, read_run_metadata
from llama_hw.train import build_session, parse_args
from llama_hw.train.checkpointing import CHECKPOINT_MARKER
from llama_hw.train.recipe import main

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "A chat between a curious user and an artificial intelligence assistant. USER: Hello! ASSISTANT:"


def prompt_ids(model_dir):
    from llama_hw.data import load_tokenizer

    return load_tokenizer(str(model_dir))(PROMPT, return_tensors="pt")["input_ids"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, stories260k_dir, dummy_conversations):
    out = tmp_path_factory.mktemp("full") / "out"
    assert run_cli(main, small_run(stories260k_dir, dummy_conversations, out, "--max_steps", "30")) == 0
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, stories260k_dir, dummy_conversations):
    out = tmp_path_factory.mktemp("lora") / "out"
    argv = small_run(stories260k_dir, dummy_conversations, out, "--max_steps", "30", "--learning_rate", "5e-3",
                     "--finetuning_type", "lora", "--lora_r", "8")
    assert run_cli(main, argv) == 0
    return out


def mean(values):
    return sum(values) / len(values)


def test_full_finetuning_loss_falls(full_run):
    losses = logged_losses(full_run)
    assert len(losses) == 30
    assert mean(losses[-5:]) < 0.5 * mean(losses[:5])


def test_lora_loss_falls(lora_run):
    losses = logged_losses(lora_run)
    assert len(losses) == 30
    assert mean(losses[-5:]) < 0.5 * mean(losses[:5])


def test_full_output_loads_with_transformers_and_chat(full_run, stories260k_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert read_run_metadata(full_run)["template"] == "vicuna_v1.1"
    assert read_run_metadata(full_run)["finetuning_type"] == "full"
    trained = AutoModelForCausalLM.from_pretrained(full_run)
    base = AutoModelForCausalLM.from_pretrained(stories260k_dir)
    ids = prompt_ids(stories260k_dir)
    assert AutoTokenizer.from_pretrained(full_run)(PROMPT, return_tensors="pt")["input_ids"].equal(ids)
    with torch.no_grad():
        trained_logits, base_logits = trained(ids).logits, base(ids).logits
        chat_model = load_model(full_run, get_backend("cpu"), precision="fp32")
        assert torch.allclose(chat_model(ids).logits, trained_logits, atol=1e-5)
    assert not torch.allclose(trained_logits, base_logits, atol=1e-3)  # it did learn something
    assert trained.config.use_cache  # saved for inference


def test_lora_output_is_an_adapter_chat_applies(lora_run, stories260k_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert (lora_run / "adapter_model.safetensors").is_file() and not (lora_run / "model.safetensors").exists()
    assert read_run_metadata(lora_run)["base_model"] == str(stories260k_dir.resolve())
    ids = prompt_ids(stories260k_dir)
    with torch.no_grad():
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(stories260k_dir), lora_run)(ids).logits
        chat_model = load_model(lora_run, get_backend("cpu"), precision="fp32")  # base found via llama_hw.json
        assert torch.allclose(chat_model(ids).logits, reference, atol=1e-4)  # chat merges the adapter


def test_lora_training_continues_from_a_saved_adapter(lora_run, tmp_path, stories260k_dir, dummy_conversations):
    out = tmp_path / "continued"
    argv = small_run(stories260k_dir, dummy_conversations, out, "--max_steps", "2", "--learning_rate", "5e-3",
                     "--lora_weight_path", str(lora_run))
    assert run_cli(main, argv) == 0
    assert read_run_metadata(out)["finetuning_type"] == "lora"
    # it starts where the first run ended (its first batch is the first run's first batch)
    assert logged_losses(out)[0] < 0.5 * logged_losses(lora_run)[0]


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, stories260k_dir, dummy_conversations,
                                                          monkeypatch, capsys):
    def argv(out):
        return small_run(stories260k_dir, dummy_conversations, out, "--max_steps", "12", "--save_strategy", "steps",
                         "--save_steps", "5", "--lr_scheduler_type", "linear", "--warmup_ratio", "0.1")

    uninterrupted, crashed = tmp_path / "uninterrupted", tmp_path / "crashed"
    assert run_cli(main, argv(uninterrupted)) == 0

    with pytest.raises(RuntimeError, match="simulated crash"):
        build_session(parse_args(argv(crashed)), callbacks=[CrashAtStep(8)]).run()
    # The failed run left a complete checkpoint and nothing that looks like a finished model.
    assert (crashed / "checkpoint-5" / CHECKPOINT_MARKER).is_file()
    assert not any((crashed / name).exists() for name in (METADATA_FILE, "config.json", "model.safetensors"))

    # As llama_hw.launch --max-restarts restarts it: the same command, restart count 1. Even with
    # --overwrite_output_dir (meant for the first start) a restart continues from checkpoint-5.
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    capsys.readouterr()
    assert run_cli(main, argv(crashed) + ["--overwrite_output_dir", "True"]) == 0
    assert f"resuming from {crashed / 'checkpoint-5'}" in capsys.readouterr().out
    assert logged_losses(crashed) == logged_losses(uninterrupted)  # exactly, step by step
    from safetensors.torch import load_file

    first, second = load_file(uninterrupted / "model.safetensors"), load_file(crashed / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert read_run_metadata(crashed)["global_step"] == 12


def test_cls_task_trains_and_predicts(tmp_path, stories260k_dir):
    from transformers import AutoModelForSequenceClassification

    train, evaluation = write_cls_data(tmp_path)
    out = tmp_path / "cls"
    argv = small_run(stories260k_dir, train, out, "--task", "cls", "--eval_data_path", str(evaluation),
                     "--max_steps", "40", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
                     "--do_predict", "True")
    assert run_cli(main, argv) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 32
    accuracy = mean([row["prediction"] == row["label"] for row in rows])
    assert accuracy >= 0.9, rows

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.padding_side = "left"  # as in training
    batch = tokenizer([row["text"] for row in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    assert [model.config.id2label[index] for index in predicted] == [row["prediction"] for row in rows]


def test_fastchat_readme_command_trains(tmp_path, stories260k_dir, dummy_conversations, capsys):
    """FastChat's README flag set, unchanged, trains for two steps (one process: FSDP is dropped with a note)."""
    out = tmp_path / "vicuna"
    argv = ["--model_name_or_path", str(stories260k_dir), "--data_path", str(dummy_conversations),
            "--output_dir", str(out), *FASTCHAT_README_FLAGS,
            # only to keep the test short: 2 optimizer steps of 2 x 2 conversations instead of 3 epochs of 2 x 16
            "--max_steps", "2", "--gradient_accumulation_steps", "2", "--disable_tqdm", "True"]
    code = run_cli(main, argv)
    if "bf16" not in get_backend("cpu").supported_precisions():
        assert code == 2 and "bf16 is not supported" in capsys.readouterr().err
        return
    assert code == 0
    printed = capsys.readouterr().out
    assert "--fsdp ignored: sharding needs more than one process" in printed
    assert "--tf32 True ignored" in printed
    assert len(logged_losses(out)) == 2
    assert read_run_metadata(out)["model_max_length"] == 2048
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 4.0


def test_fastchat_gradient_checkpointing_flag_runs_without_deprecation_warnings(tmp_path, stories260k_dir,
                                                                                dummy_conversations):
    """`--gradient_checkpointing True` (FastChat's commands) on a LoRA run: translated, and nothing on stderr
    tells the user about deprecated transformers attributes they never used."""
    from train_support import train_cli

    out = tmp_path / "out"
    result = train_cli(small_run(stories260k_dir, dummy_conversations, out, "--max_steps", "1",
                                 "--finetuning_type", "lora", "--gradient_checkpointing", "True",
                                 "--report_to", "none"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note: --gradient_checkpointing is now --activation_checkpointing" in result.stdout
    assert "gradient_checkpointing` is deprecated" not in result.stderr, result.stderr
    assert "FutureWarning" not in result.stderr, result.stderr
    assert read_run_metadata(out)["global_step"] == 1
