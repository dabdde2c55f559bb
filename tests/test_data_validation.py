"""Every validation rule names file, record index and rule, exits with code 2 from the CLI; skip counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from data_support import build, llama2_tokenizer, private_cache, write_jsonl  # noqa: F401 - fixtures

from conftest import subprocess_env
from llama_hw.cli import module_main
from llama_hw.data import read_records
from llama_hw.data.formats import RULES
from llama_hw.errors import DataError, UsageError

GOOD = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}

# rule -> the bad record placed at index 1 (after one good record) of a JSONL file
BAD_RECORDS = {
    "not_an_object": ["a list, not an object"],
    "missing_key": {"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]},
    "non_string": {"conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "x"}]},
    "not_a_list": {"conversations": "Hi"},
    "unknown_role": {"conversations": [{"from": "robot", "value": "Hi"}, {"from": "gpt", "value": "x"}]},
    "empty_turn": {"conversations": [{"from": "human", "value": "  \n"}, {"from": "gpt", "value": "x"}]},
    "empty_conversation": {"conversations": [{"from": "system", "value": "Be nice."}]},
    "not_alternating": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Hi?"}]},
}


def bad_file(tmp_path, rule: str):
    path = tmp_path / f"{rule}.jsonl"
    if rule == "invalid_json":
        path.write_text(json.dumps(GOOD) + "\n" + '{"conversations": [\n', encoding="utf-8")
        return path
    return write_jsonl(path, [GOOD, BAD_RECORDS[rule], GOOD])


def test_every_rule_has_a_case():
    assert set(BAD_RECORDS) | {"invalid_json"} == set(RULES)


def inspect_argv(path, tokenizer_dir) -> list[str]:
    return ["inspect", "--data_path", str(path), "--tokenizer", str(tokenizer_dir)]


def test_every_rule_fails_the_cli_with_file_index_rule_and_exit_code_2(tmp_path, llama2_tokenizer_dir, capsys):
    """`module_main` is exactly what `python -m llama_hw.data` runs; one real process follows below."""
    for rule in RULES:
        path = bad_file(tmp_path, rule)
        assert module_main("llama_hw.data.recipe", inspect_argv(path, llama2_tokenizer_dir)) == 2, rule
        message = capsys.readouterr().err.strip()
        assert message.startswith(f"error: {path}: record 1: {rule}: "), message
        assert message.endswith("pass --on_bad_record skip to skip bad records")
        assert len(message.splitlines()) == 1


def test_cli_process_exits_with_code_2_before_loading_the_tokenizer(tmp_path):
    path = bad_file(tmp_path, "unknown_role")
    command = [sys.executable, "-m", "llama_hw.data", *inspect_argv(path, tmp_path / "no_tokenizer_needed")]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: record 1: unknown_role: turn 0 has from='robot'; expected one of "
        "system/human/user/gpt/assistant; fix the record, or pass --on_bad_record skip to skip bad records"
    ]


def test_rule_details(tmp_path):
    """The detail part of each message points at the turn and key at fault."""
    details = {
        "missing_key": "turn 0 missing key 'value'",
        "non_string": "turn 0 'value' is int, expected a string",
        "unknown_role": "turn 0 has from='robot'",
        "empty_turn": "turn 0 (user) is empty",
        "not_alternating": "turn 1 is user; expected assistant",
        "invalid_json": "line 2 column",
    }
    for rule, detail in details.items():
        with pytest.raises(DataError, match=rule) as caught:
            read_records(str(bad_file(tmp_path, rule)))
        assert detail in str(caught.value)


def test_skip_mode_counts_per_rule(tmp_path, llama2_tokenizer):
    lines = [json.dumps(GOOD)]
    for rule, record in BAD_RECORDS.items():
        lines += [json.dumps(record)] * (2 if rule == "empty_turn" else 1) + [json.dumps(GOOD)]
    lines.append("{not json")
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sft = build(path, llama2_tokenizer, 512, on_bad_record="skip")
    expected = {rule: 1 for rule in RULES} | {"empty_turn": 2}
    assert sft.stats.skipped == expected
    assert sft.stats.records == sft.stats.samples == len(BAD_RECORDS) + 1
    with pytest.raises(DataError, match="record 1: not_an_object"):
        build(path, llama2_tokenizer, 512)


def test_file_level_errors(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": ]', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.json: invalid_json: line 2 column 18.*cannot be partly read"):
        read_records(str(broken), on_bad_record="skip")
    with pytest.raises(DataError, match="data file not found"):
        read_records(str(tmp_path / "missing.json"))
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"text": "plain"}])
    with pytest.raises(DataError, match="cannot detect the record format"):
        read_records(str(unknown))


def test_formats_are_detected_per_file_and_mixed(tmp_path):
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([{**GOOD, "system": "Be nice."}]), encoding="utf-8")
    openai = write_jsonl(tmp_path / "openai.jsonl", [{"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
    ]}])  # fmt: skip
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Translate", "input": "hola", "output": "hello"},
        {"instruction": "Say hi", "output": "hi", "system": "Be brief."},
    ])  # fmt: skip
    alpaca.write_bytes(b"\xef\xbb\xbf" + alpaca.read_bytes())  # a byte-order mark, as some editors write
    records = read_records(f"{sharegpt},{openai}, {alpaca}")
    assert list(records.formats.values()) == ["sharegpt", "openai", "alpaca"]
    assert records.conversations == [
        [("system", "Be nice."), ("user", "Hi"), ("assistant", "Hello!")],
        [("system", "S"), ("user", "U"), ("assistant", "A")],
        [("user", "Translate\nhola"), ("assistant", "hello")],
        [("system", "Be brief."), ("user", "Say hi"), ("assistant", "hi")],
    ]
    assert records.sources == [(str(sharegpt), 0), (str(openai), 0), (str(alpaca), 0), (str(alpaca), 1)]


def test_bad_template_names_are_usage_errors(llama2_tokenizer, dummy_conversations):
    with pytest.raises(UsageError, match="unknown --template 'vicuna_1.1': did you mean vicuna_v1.1"):
        build(dummy_conversations, llama2_tokenizer, 512, template="vicuna_1.1")
    with pytest.raises(UsageError, match="'chatgpt' cannot render a training prompt"):
        build(dummy_conversations, llama2_tokenizer, 512, template="chatgpt")
    with pytest.raises(UsageError, match="needs a tokenizer with a chat_template"):
        build(dummy_conversations, llama2_tokenizer, 512, template="tokenizer")
