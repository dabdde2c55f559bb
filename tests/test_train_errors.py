"""Bad runs end with one clear line and exit code 2, before anything is written."""

from __future__ import annotations

import shutil

import pytest
from train_support import one_thread, small_run, train_cli

from llama_hw.errors import run_cli
from llama_hw.models import write_run_metadata
from llama_hw.train.recipe import main

pytestmark = pytest.mark.usefixtures("one_thread")


def fails_with(argv, message, capsys) -> None:
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err, err
    assert len(err.splitlines()) == 1, err


def test_qlora_with_zero3(tmp_path, stories260k_dir, dummy_conversations, capsys):
    out = tmp_path / "out"
    argv = small_run(stories260k_dir, dummy_conversations, out, "--q_lora", "True", "--deepspeed", "zero3")
    fails_with(argv, "--finetuning_type qlora does not work with ZeRO-3", capsys)
    assert not out.exists()


def test_qlora_without_bitsandbytes_on_this_device(tmp_path, stories260k_dir, dummy_conversations, capsys):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        message = "needs bitsandbytes"
    else:
        message = "does not run on cpu devices"
    fails_with(small_run(stories260k_dir, dummy_conversations, tmp_path / "out", "--finetuning_type", "qlora"),
               message, capsys)


def test_bf16_on_ascend_910a(tmp_path, stories260k_dir, dummy_conversations, fake_torch_npu, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_NPU_NAME", "Ascend910A")
    out = tmp_path / "out"
    argv = small_run(stories260k_dir, dummy_conversations, out, "--device", "npu", "--bf16", "True")
    fails_with(argv, "bf16 is not supported on Ascend910A (npu); supported: fp32, fp16", capsys)
    assert not out.exists()


def test_missing_data_file(tmp_path, stories260k_dir, capsys):
    fails_with(small_run(stories260k_dir, tmp_path / "nowhere.json", tmp_path / "out"), "nowhere.json", capsys)


def test_model_directory_without_weights(tmp_path, stories260k_dir, dummy_conversations, capsys):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(stories260k_dir / "config.json", model)
    shutil.copy(stories260k_dir / "tokenizer.model", model)
    out = tmp_path / "out"
    fails_with(small_run(model, dummy_conversations, out), f"--model_name_or_path {model} has no weights", capsys)
    assert not out.exists()


def test_missing_model_directory(tmp_path, dummy_conversations, capsys):
    fails_with(small_run(tmp_path / "missing", dummy_conversations, tmp_path / "out"), "is not a directory", capsys)


def test_fsdp_with_deepspeed(tmp_path, stories260k_dir, dummy_conversations, capsys):
    argv = small_run(stories260k_dir, dummy_conversations, tmp_path / "out", "--fsdp", "full_shard", "--deepspeed", "zero2")
    fails_with(argv, "--deepspeed and --fsdp both shard the model", capsys)


def test_output_dir_with_a_finished_model(tmp_path, stories260k_dir, dummy_conversations, capsys):
    out = tmp_path / "out"
    write_run_metadata(out, template="vicuna_v1.1")
    fails_with(small_run(stories260k_dir, dummy_conversations, out), "already holds a trained model", capsys)


def test_resume_from_a_missing_checkpoint(tmp_path, stories260k_dir, dummy_conversations, capsys):
    argv = small_run(stories260k_dir, dummy_conversations, tmp_path / "out",
                     "--resume_from_checkpoint", str(tmp_path / "checkpoint-7"))
    fails_with(argv, "--resume_from_checkpoint", capsys)


def test_command_line_error_from_the_module_entry_point(tmp_path, dummy_conversations):
    result = train_cli(["--model_name_or_path", str(tmp_path), "--data_path", str(dummy_conversations),
                        "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --model_name_or_path {tmp_path} has no config.json; it is not a Hugging Face model directory"
    )
    assert "Traceback" not in result.stderr


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if the trainer gets as far as loading the model: these checks come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr("llama_hw.train.session.load_training_model", refuse)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--learning_rate", "-1e-3"], "--learning_rate must not be negative, got -0.001"),  # -1e-3 is a number
        (["--learning_rate=-2e-5"], "--learning_rate must not be negative, got -2e-05"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1, got 0"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1, got 0"),
        (["--model_max_length", "0"], "--model_max_length must be a positive number of tokens, got 0"),
        (["--cutoff_len", "0"], "--model_max_length must be a positive number of tokens, got 0"),
    ],
)
def test_values_that_cannot_train(extra, message, tmp_path, stories260k_dir, dummy_conversations, no_model_loading,
                                  capsys):
    out = tmp_path / "out"
    fails_with(small_run(stories260k_dir, dummy_conversations, out, *extra), message, capsys)
    assert not out.exists()


def test_output_dir_that_is_a_file(tmp_path, stories260k_dir, dummy_conversations, no_model_loading, capsys):
    out = tmp_path / "out"
    out.write_text("notes")
    fails_with(small_run(stories260k_dir, dummy_conversations, out), f"--output_dir {out} is a file", capsys)
    fails_with(small_run(stories260k_dir, dummy_conversations, out / "run"), f"{out} is a file, not a folder", capsys)
    assert out.read_text() == "notes"


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only file system (root can write anywhere else): a tmpfs remounted read-only."""
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_output_dir_that_is_read_only(read_only_dir, stories260k_dir, dummy_conversations, no_model_loading, capsys):
    fails_with(small_run(stories260k_dir, dummy_conversations, read_only_dir),
               f"--output_dir {read_only_dir} is not writable", capsys)
    fails_with(small_run(stories260k_dir, dummy_conversations, read_only_dir / "new"),
               f"is not writable ({read_only_dir}, where it would be created)", capsys)


def test_unknown_lora_target_lists_the_models_linear_modules(tmp_path, stories260k_dir, dummy_conversations,
                                                             no_model_loading, capsys):
    out = tmp_path / "out"
    argv = small_run(stories260k_dir, dummy_conversations, out, "--finetuning_type", "lora",
                     "--lora_target", "q_proj,qkv_proj")
    fails_with(argv, "--lora_target qkv_proj: the model has no module of that name; its linear modules are "
                     "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head", capsys)
    assert not out.exists()
