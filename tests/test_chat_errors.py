"""Every mistake a user can make with `llama-hw chat` ends with one `error:` line and exit code 2."""

from __future__ import annotations

import pytest
import torch

from chat_support import PROMPT, one_torch_thread, save_mismatched_adapter  # noqa: F401 - one_torch_thread is autouse
from llama_hw.chat import recipe
from llama_hw.errors import run_cli


def chat_error(capsys, *args: str) -> str:
    """Run chat in-process; assert exit code 2 and a single error line; return that line."""
    code = run_cli(recipe.main, [*args, "--prompt", PROMPT, "--temperature", "0"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert out == ""
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line, err
    return line


def test_missing_model_path(capsys, tmp_path):
    line = chat_error(capsys, "--model-path", str(tmp_path / "nope"), "--device", "cpu")
    assert f"--model-path {tmp_path / 'nope'} does not exist" in line


def test_model_path_without_a_model(capsys, tmp_path):
    line = chat_error(capsys, "--model-path", str(tmp_path), "--device", "cpu")
    assert "is not a Hugging Face model directory (no config.json)" in line


def test_missing_adapter(capsys, stories260k_dir, tmp_path):
    line = chat_error(capsys, "--model-path", str(stories260k_dir), "--adapter", str(tmp_path / "lora"),
                      "--device", "cpu")
    assert f"--adapter {tmp_path / 'lora'} does not exist" in line


@pytest.mark.parametrize(
    "shape, symptom",
    [
        ({"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}, "size mismatch"),
        ({"num_hidden_layers": 7}, "adapter weights have no place in it"),  # peft alone would drop them silently
    ],
    ids=["other-width", "more-layers"],
)
def test_adapter_trained_on_another_base(capsys, stories260k_dir, tmp_path, shape, symptom):
    adapter = save_mismatched_adapter(tmp_path / "lora", **shape)
    line = chat_error(capsys, "--model-path", str(stories260k_dir), "--adapter", str(adapter), "--device", "cpu")
    assert f"--adapter {adapter} does not match the base model" in line and symptom in line


def test_unknown_template_suggests_close_names(capsys, stories260k_dir):
    line = chat_error(capsys, "--model-path", str(stories260k_dir), "--template", "vicuna_v1", "--device", "cpu")
    assert "unknown conversation template 'vicuna_v1' (--template)" in line
    assert "vicuna_v1.1" in line and "raw" in line


def test_npu_requested_without_torch_npu(capsys, stories260k_dir, no_torch_npu):
    line = chat_error(capsys, "--model-path", str(stories260k_dir), "--device", "npu")
    assert "--device npu is unavailable: torch_npu is not installed" in line


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch has CUDA")
def test_cuda_requested_on_a_cpu_build(capsys, stories260k_dir):
    line = chat_error(capsys, "--model-path", str(stories260k_dir), "--device", "cuda")
    assert "--device cuda is unavailable" in line and "without CUDA support" in line


def test_more_devices_than_the_backend_has(capsys, stories260k_dir):
    line = chat_error(capsys, "--model-path", str(stories260k_dir), "--template", "raw", "--device", "cpu",
                      "--num-devices", "2")
    assert "--num-devices 2 is more than the 1 cpu device(s)" in line


def test_reply_longer_than_the_context(capsys, stories260k_dir):
    line = chat_error(capsys, "--model-path", str(stories260k_dir), "--template", "raw", "--device", "cpu",
                      "--max-new-tokens", "600")
    assert "--max-new-tokens 600 must be between 1 and 511" in line
