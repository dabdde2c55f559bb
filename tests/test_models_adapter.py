"""A local adapter folder is checked before peft sees it: peft would take it for a Hub repo id."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from llama_hw.errors import UsageError
from llama_hw.models import resolve_model_source
from llama_hw.models.loading import check_adapter_dir


def adapter_folder(tmp_path, *files: str):
    folder = tmp_path / "lora"
    folder.mkdir()
    for name in files:
        if name.endswith(".safetensors"):
            save_file({"lora_A": torch.zeros(2, 2)}, folder / name)
        else:
            (folder / name).write_text(json.dumps({"peft_type": "LORA"}) if name.endswith(".json") else "x")
    return folder


def test_folder_without_weights_names_the_missing_files(tmp_path):
    folder = adapter_folder(tmp_path, "adapter_config.json")
    with pytest.raises(UsageError) as caught:
        check_adapter_dir(folder)
    message = str(caught.value)
    assert message.startswith(f"--adapter {folder} has adapter_config.json but no adapter weights")
    assert "adapter_model.safetensors or adapter_model.bin" in message and "\n" not in message


@pytest.mark.parametrize("files, says", [
    ((), "has no adapter_config.json"),
    (("adapter_model.safetensors",), "has no adapter_config.json"),
])
def test_folder_without_config_is_refused(tmp_path, files, says):
    folder = adapter_folder(tmp_path, *files)
    with pytest.raises(UsageError, match=says):
        check_adapter_dir(folder)


def test_missing_folder_and_file_are_refused_with_the_flag(tmp_path):
    with pytest.raises(UsageError, match=f"^--lora_weight_path {tmp_path / 'nope'} does not exist"):
        check_adapter_dir(tmp_path / "nope", flag="--lora_weight_path")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        check_adapter_dir(tmp_path / "file")


@pytest.mark.parametrize("weights", ["adapter_model.safetensors", "adapter_model.bin"])
def test_complete_folder_passes(tmp_path, weights):
    check_adapter_dir(adapter_folder(tmp_path, "adapter_config.json", weights))


def test_chat_and_export_resolution_refuse_an_adapter_without_weights(stories260k_dir, tmp_path, monkeypatch):
    # No network may be reached whatever happens: peft would otherwise try the Hub for the weights.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = adapter_folder(tmp_path, "adapter_config.json")
    with pytest.raises(UsageError, match="no adapter weights"):
        resolve_model_source(stories260k_dir, folder)
    (folder / "llama_hw.json").write_text(json.dumps({"template": "raw", "base_model": str(stories260k_dir)}))
    with pytest.raises(UsageError, match=f"^--model-path {folder} has adapter_config.json but no adapter weights"):
        resolve_model_source(folder)


def test_tokenizer_comes_from_the_adapter_only_when_it_holds_one(stories260k_dir, tmp_path):
    folder = adapter_folder(tmp_path, "adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json")
    assert resolve_model_source(stories260k_dir, folder).tokenizer_dir == stories260k_dir  # settings, no tokenizer
    (folder / "tokenizer.json").write_text("{}")
    assert resolve_model_source(stories260k_dir, folder).tokenizer_dir == folder
