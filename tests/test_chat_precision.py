"""Chat's precision: fp32 by default on CPU (also where `env` lists bf16), `--precision` on request, and
messages and flags that exist on chat."""

from __future__ import annotations

import pytest
import torch

from chat_support import PROMPT, one_torch_thread  # noqa: F401 - one_torch_thread is autouse
from llama_hw.backends import cpu, get_backend
from llama_hw.chat import recipe
from llama_hw.errors import run_cli

ONE_SHOT = ("--template", "raw", "--temperature", "0", "--max-new-tokens", "4", "--device", "cpu", "--prompt", PROMPT)


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    """A CPU with native bf16 arithmetic, as `llama-hw env` reports it (AVX512-BF16)."""
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert "bf16" in get_backend("cpu").supported_precisions()


@pytest.fixture
def loaded_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtype of every model chat loads."""
    dtypes = []
    load_model = recipe.load_model

    def recording_load_model(*args, **kwargs):
        model = load_model(*args, **kwargs)
        dtypes.append(next(model.parameters()).dtype)
        return model

    monkeypatch.setattr(recipe, "load_model", recording_load_model)
    return dtypes


def test_cpu_default_is_fp32_where_bf16_is_supported(stories260k_dir, cpu_with_bf16, loaded_dtypes, capsys):
    assert run_cli(recipe.main, ["--model-path", str(stories260k_dir), *ONE_SHOT]) == 0
    assert loaded_dtypes == [torch.float32]
    assert capsys.readouterr().out.strip()  # it answered


def test_bf16_on_request(stories260k_dir, cpu_with_bf16, loaded_dtypes, capsys):
    assert run_cli(recipe.main, ["--model-path", str(stories260k_dir), *ONE_SHOT, "--precision", "bf16"]) == 0
    assert loaded_dtypes == [torch.bfloat16]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_unsupported_precision_names_chats_own_flag(stories260k_dir, monkeypatch, loaded_dtypes, capsys, precision):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2"})
    assert run_cli(recipe.main, ["--model-path", str(stories260k_dir), *ONE_SHOT, "--precision", precision]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --precision {precision} is not supported on ") and err.count("\n") == 1
    assert "supported: fp32; pass --precision fp32 or leave --precision out" in err
    assert "--bf16" not in err and "--fp16" not in err and "--fp32" not in err  # train's flags, not chat's
    assert loaded_dtypes == []  # refused before the model loads


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--model", "m"], "the following arguments are required: --model-path"),  # not taken for --model-path
    (["--model-path", "m", "--temp", "0"], "unrecognized arguments: --temp 0"),
    (["--model-path", "m", "--precision", "int8"], "argument --precision: invalid choice: 'int8'"),
])
def test_bad_flags_give_one_line(argv, fragment, capsys):
    assert run_cli(recipe.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1, err


def test_help_states_the_rule_the_code_follows():
    help_text = recipe.build_parser().format_help().replace("\n", " ")
    assert "fp32 on CPUs, also on those that run bf16 natively" in " ".join(help_text.split())
    assert get_backend("cpu").default_precision() == "fp32"
