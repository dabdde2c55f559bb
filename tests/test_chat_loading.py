"""What chat loads: a LoRA adapter trained here, the template the run recorded, the run metadata file."""

from __future__ import annotations

import io
import json
import sys

import pytest

from chat_support import (  # noqa: F401 - one_torch_thread is autouse
    ADAPTER_CONTINUATION,
    BASE_CONTINUATION,
    PROMPT,
    one_torch_thread,
    train_lora_adapter,
)
from llama_hw.chat import recipe
from llama_hw.errors import DataError, UsageError, run_cli
from llama_hw.models import METADATA_FILE, read_run_metadata, resolve_model_source, write_run_metadata

GREEDY = ("--temperature", "0", "--max-new-tokens", "24", "--device", "cpu")


@pytest.fixture(scope="module")
def lora_adapter(stories260k_dir, tmp_path_factory):
    return train_lora_adapter(stories260k_dir, tmp_path_factory.mktemp("lora"), template="raw")


def reply(capsys, *args: str) -> str:
    code = run_cli(recipe.main, [*args, *GREEDY])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_adapter_changes_the_greedy_reply(stories260k_dir, lora_adapter, capsys):
    base = reply(capsys, "--model-path", str(stories260k_dir), "--template", "raw", "--prompt", PROMPT)
    tuned = reply(capsys, "--model-path", str(stories260k_dir), "--adapter", str(lora_adapter),
                  "--template", "raw", "--prompt", PROMPT)
    assert BASE_CONTINUATION in base
    assert ADAPTER_CONTINUATION in tuned and BASE_CONTINUATION not in tuned


def test_adapter_directory_alone_brings_its_base_model_and_recorded_template(lora_adapter, capsys):
    assert read_run_metadata(lora_adapter)["template"] == "raw"
    recorded = reply(capsys, "--model-path", str(lora_adapter), "--prompt", PROMPT)
    explicit = reply(capsys, "--model-path", str(lora_adapter), "--template", "raw", "--prompt", PROMPT)
    other = reply(capsys, "--model-path", str(lora_adapter), "--template", "one_shot", "--prompt", PROMPT)
    assert recorded.startswith(f", {ADAPTER_CONTINUATION}")
    assert recorded == explicit != other  # the recorded template was used, and the template matters


def test_template_recorded_next_to_a_model_is_used(stories260k_dir, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for item in stories260k_dir.iterdir():
        (model_dir / item.name).symlink_to(item)
    fastchat_default = reply(capsys, "--model-path", str(model_dir), "--prompt", PROMPT)
    write_run_metadata(model_dir, template="raw", finetuning_type="full")
    recorded = reply(capsys, "--model-path", str(model_dir), "--prompt", PROMPT)
    # raw continues the words themselves (", there was..."); FastChat's match for the name (one_shot) would
    # wrap them in a Human/Assistant exchange.
    assert recorded.startswith(f", {BASE_CONTINUATION}") and recorded != fastchat_default


def test_prompt_on_stdin_when_it_is_not_a_terminal(stories260k_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT + "\n"))
    assert BASE_CONTINUATION in reply(capsys, "--model-path", str(stories260k_dir), "--template", "raw")


def test_run_metadata_round_trip(tmp_path):
    path = write_run_metadata(tmp_path / "run", template="vicuna_v1.1", base_model=tmp_path / "base",
                              finetuning_type="lora")
    assert path == tmp_path / "run" / METADATA_FILE
    assert read_run_metadata(tmp_path / "run") == {
        "format_version": 1, "template": "vicuna_v1.1", "base_model": str(tmp_path / "base"), "finetuning_type": "lora",
    }
    assert [p.name for p in (tmp_path / "run").iterdir()] == [METADATA_FILE]  # no temporary file left
    assert read_run_metadata(tmp_path) == {}
    with pytest.raises(UsageError, match="template"):
        write_run_metadata(tmp_path / "other", template="")


def test_broken_run_metadata_names_the_file(tmp_path):
    (tmp_path / METADATA_FILE).write_text("{not json")
    with pytest.raises(DataError, match=f"{METADATA_FILE} is not valid JSON"):
        read_run_metadata(tmp_path)
    (tmp_path / METADATA_FILE).write_text(json.dumps(["raw"]))
    with pytest.raises(DataError, match="must hold a JSON object"):
        read_run_metadata(tmp_path)


def test_adapter_metadata_overrides_the_base_and_tokenizer_stays_with_the_base(stories260k_dir, lora_adapter):
    source = resolve_model_source(stories260k_dir, lora_adapter)
    assert source.base == stories260k_dir and source.adapter == lora_adapter
    assert source.metadata["finetuning_type"] == "lora"
    assert source.tokenizer_dir == stories260k_dir  # the adapter directory holds no tokenizer
