"""Shared pieces of the data tests: tokenizers loaded once, an isolated token cache, small data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_hw.data import DataArguments, build_sft_data, load_tokenizer


@pytest.fixture(scope="session")
def llama2_tokenizer(llama2_tokenizer_dir):
    return load_tokenizer(str(llama2_tokenizer_dir), model_max_length=2048)


@pytest.fixture(scope="session")
def stories_tokenizer(stories260k_dir):
    return load_tokenizer(str(stories260k_dir), model_max_length=512)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every data test writes its token cache to a fresh directory, never to ~/.cache."""
    cache = tmp_path_factory.mktemp("llama_hw_cache")
    monkeypatch.setenv("LLAMA_HW_CACHE_DIR", str(cache))
    return cache


def alpaca_path(shared_dir: Path, language: str) -> Path:
    return shared_dir / "data" / "alpaca" / f"alpaca_{language}_demo.json"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def build(data_path, tokenizer, max_length: int, **flags):
    """build_sft_data with DataArguments from keyword flags; the cache is off unless asked for."""
    flags.setdefault("data_cache", False)
    return build_sft_data(DataArguments(data_path=str(data_path), **flags), tokenizer, max_length)


def fastchat_prompts(template: str, turns: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """Render with FastChat directly, as its chat CLI does: the full prompt, and for every assistant turn
    (generation prompt before the reply, prompt including the reply)."""
    from fastchat.conversation import get_conv_template

    conv = get_conv_template(template)
    steps = []
    for role, content in turns:
        if role == "system":
            conv.set_system_message(content)
        elif role == "user":
            conv.append_message(conv.roles[0], content)
        else:
            conv.append_message(conv.roles[1], None)
            before = conv.get_prompt()
            conv.update_last_message(content)
            steps.append((before, conv.get_prompt()))
    return conv.get_prompt(), steps
