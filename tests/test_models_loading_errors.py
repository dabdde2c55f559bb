"""A broken model folder ends train, chat and export with one `error:` line naming the file and the fix.

Each case starts from a real copy of stories260K and breaks one thing the way it happens to users: a
config.json edited wrong, a download cut short, a pickled checkpoint that holds more than tensors, a
folder without its tokenizer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess

import pytest
import torch
from chat_support import PROMPT, save_mismatched_adapter
from conftest import subprocess_env
from train_support import one_thread, small_run  # noqa: F401 - one_thread is a fixture

from llama_hw.chat.recipe import main as chat_main
from llama_hw.errors import run_cli
from llama_hw.export.recipe import main as export_main
from llama_hw.train.recipe import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

COMMANDS = ["train", "chat", "export"]


def copy_model(stories260k_dir, tmp_path, name="model"):
    model = tmp_path / name
    shutil.copytree(stories260k_dir, model)
    return model


def error_line(command, model, tmp_path, data, capsys) -> str:
    """Run `command` on `model` in-process; assert exit 2 with exactly one `error:` line; return it."""
    if command == "train":
        argv = small_run(model, data, tmp_path / "out", "--max_steps", "1", "--model_max_length", "256")
        code = run_cli(train_main, argv)
    elif command == "chat":
        code = run_cli(chat_main, ["--model-path", str(model), "--prompt", PROMPT, "--device", "cpu",
                                   "--template", "raw", "--max-new-tokens", "4"])
    else:
        adapter = tmp_path / "lora"
        if not adapter.exists():
            save_mismatched_adapter(adapter)  # stories260K's own shape
        code = run_cli(export_main, ["--base", str(model), "--adapter", str(adapter),
                                     "--out", str(tmp_path / "merged")])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert not (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "merged").exists()
    assert not list(tmp_path.glob(".merged*"))  # nothing half-written beside --out either
    return lines[-1]


@pytest.mark.parametrize("command", COMMANDS)
def test_malformed_config_names_the_file_and_the_position(command, stories260k_dir, dummy_conversations, tmp_path,
                                                           capsys):
    model = copy_model(stories260k_dir, tmp_path)
    (model / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": 64,\n}\n')
    line = error_line(command, model, tmp_path, dummy_conversations, capsys)
    assert line == (f"error: {model / 'config.json'} is not valid JSON: Expecting property name enclosed in double "
                    "quotes at line 4 column 1 (character 48); fix the file there or re-download the model")


@pytest.mark.parametrize("command", COMMANDS)
def test_truncated_safetensors_says_truncated_and_to_download_again(command, stories260k_dir, dummy_conversations,
                                                                     tmp_path, capsys):
    model = copy_model(stories260k_dir, tmp_path)
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    line = error_line(command, model, tmp_path, dummy_conversations, capsys)
    assert line == (f"error: {weights} is truncated: {size // 2} of the {size} bytes its header describes (an "
                    "interrupted download or save); re-download it, or re-save the model with save_pretrained")


def test_garbage_safetensors_is_called_invalid(stories260k_dir, dummy_conversations, tmp_path, capsys):
    model = copy_model(stories260k_dir, tmp_path)
    (model / "model.safetensors").write_bytes(b"<html>rate limited</html>\n" * 40)
    line = error_line("chat", model, tmp_path, dummy_conversations, capsys)
    assert f"{model / 'model.safetensors'} is not a valid safetensors file (header too large)" in line


def pickled_model(stories260k_dir, tmp_path, extra=None):
    """stories260K with its weights as a pickled pytorch_model.bin (and no safetensors)."""
    from safetensors.torch import load_file

    model = copy_model(stories260k_dir, tmp_path, "pickled")
    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save({**state, **(extra or {})}, model / "pytorch_model.bin")
    return model


@pytest.mark.parametrize("command", COMMANDS)
def test_pickle_with_more_than_tensors_is_refused_with_a_conversion(command, stories260k_dir, dummy_conversations,
                                                                     tmp_path, capsys):
    model = pickled_model(stories260k_dir, tmp_path, {"training_args": argparse.Namespace(lr=1e-3)})
    line = error_line(command, model, tmp_path, dummy_conversations, capsys)
    assert line.startswith(f"error: {model / 'pytorch_model.bin'} is a pickle checkpoint holding objects other than "
                           "tensors (argparse.Namespace), and llama_hw unpickles only tensors")
    assert "convert it to safetensors once: python -c " in line and f"give {model}-safetensors instead" in line
    assert "weights_only=False" not in line


@pytest.mark.slow  # a subprocess that imports transformers
def test_the_suggested_conversion_gives_the_same_model(stories260k_dir, dummy_conversations, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = pickled_model(stories260k_dir, tmp_path, {"training_args": argparse.Namespace(lr=1e-3)})
    line = error_line("chat", model, tmp_path, dummy_conversations, capsys)
    command = line.split("convert it to safetensors once: ", 1)[1].rsplit(" and give ", 1)[0]
    converted = subprocess.run(command, shell=True, env=subprocess_env(), capture_output=True, text=True)
    assert converted.returncode == 0, converted.stderr
    target = tmp_path / "pickled-safetensors"
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.model"]
    ours = AutoModelForCausalLM.from_pretrained(str(target)).state_dict()
    reference = AutoModelForCausalLM.from_pretrained(str(stories260k_dir)).state_dict()
    assert all(torch.equal(ours[name], reference[name]) for name in reference)


def test_plain_tensor_pickle_still_loads(stories260k_dir, tmp_path):
    from llama_hw.backends import select_backend
    from llama_hw.models import load_model

    model = pickled_model(stories260k_dir, tmp_path)
    loaded = load_model(model, select_backend("cpu").backend, precision="fp32").state_dict()
    reference = load_model(stories260k_dir, select_backend("cpu").backend, precision="fp32").state_dict()
    assert all(torch.equal(loaded[name], reference[name]) for name in reference)


def test_truncated_pickle_says_so(stories260k_dir, dummy_conversations, tmp_path, capsys):
    model = pickled_model(stories260k_dir, tmp_path)
    weights = model / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:100_000])
    line = error_line("chat", model, tmp_path, dummy_conversations, capsys)
    assert line.startswith(f"error: {weights} is truncated or corrupt (torch: ")
    assert line.endswith("re-download it, or re-save the model with save_pretrained")


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_tokenizer_leads_with_what_is_missing(command, stories260k_dir, dummy_conversations, tmp_path, capsys):
    model = copy_model(stories260k_dir, tmp_path)
    (model / "tokenizer.model").unlink()
    line = error_line(command, model, tmp_path, dummy_conversations, capsys)
    assert line.startswith(f"error: no tokenizer.model / tokenizer.json in {model}; copy the tokenizer files")


def test_listed_shard_missing(stories260k_dir, dummy_conversations, tmp_path, capsys):
    model = copy_model(stories260k_dir, tmp_path)
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    line = error_line("train", model, tmp_path, dummy_conversations, capsys)
    assert line == (f"error: {model} lacks 1 weight file(s) that model.safetensors.index.json lists (e.g. "
                    "model-00002-of-00002.safetensors); finish the download or re-save the model with save_pretrained")


def pickled_adapter(tmp_path, extra=None):
    """A LoRA adapter for stories260K saved as a pickled adapter_model.bin."""
    from safetensors.torch import load_file

    adapter = save_mismatched_adapter(tmp_path / "lora")
    state = load_file(adapter / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").unlink()
    torch.save({**state, **(extra or {})}, adapter / "adapter_model.bin")
    return adapter, state


def chat_with_adapter(model, adapter, capsys):
    code = run_cli(chat_main, ["--model-path", str(model), "--adapter", str(adapter), "--prompt", PROMPT,
                               "--device", "cpu", "--template", "raw", "--max-new-tokens", "4"])
    out, err = capsys.readouterr()
    return code, err.strip().splitlines()


@pytest.mark.slow  # the conversion runs in a subprocess
def test_adapter_pickle_is_refused_and_the_in_place_conversion_works(stories260k_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    adapter, state = pickled_adapter(tmp_path, {"training_args": argparse.Namespace(lr=1e-3)})
    code, lines = chat_with_adapter(stories260k_dir, adapter, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {adapter / 'adapter_model.bin'} is a pickle checkpoint holding objects "
                               "other than tensors (argparse.Namespace)")
    assert "weights_only=False" not in lines[0]
    command = lines[0].split("convert it to safetensors once: ", 1)[1].rsplit(" (it adds", 1)[0]
    converted = subprocess.run(command, shell=True, env=subprocess_env(), capture_output=True, text=True)
    assert converted.returncode == 0, converted.stderr
    saved = load_file(adapter / "adapter_model.safetensors")
    assert saved.keys() == state.keys() and all(torch.equal(saved[name], state[name]) for name in state)
    assert chat_with_adapter(stories260k_dir, adapter, capsys)[0] == 0


def test_truncated_adapter_weights_are_named(stories260k_dir, tmp_path, capsys):
    adapter = save_mismatched_adapter(tmp_path / "lora")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    code, lines = chat_with_adapter(stories260k_dir, adapter, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {weights} is truncated: "), lines
