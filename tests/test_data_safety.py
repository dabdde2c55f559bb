"""Hostile and careless data input: one line, exit code 2, the file and the fix; no cache left that fails again."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from data_support import build, llama2_tokenizer, private_cache, write_jsonl  # noqa: F401 - fixtures

from llama_hw.cli import module_main
from llama_hw.data.cache import file_digest
from llama_hw.data.recipe import CUT_MARK, TRAINED_MARKS, marked_prompt, trained_spans
from llama_hw.errors import DataError

GOOD = {"conversations": [{"from": "human", "value": "Caf\u00e9?"}, {"from": "gpt", "value": "Oui!"}]}


def run_inspect(path, tokenizer_dir, capsys, *extra: str) -> tuple[int, list[str], str]:
    code = module_main("llama_hw.data.recipe", ["inspect", "--data_path", str(path), "--tokenizer",
                                                str(tokenizer_dir), *extra])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.startswith("error:")], captured.out


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bom.json", json.dumps([GOOD]).encode("utf-16"),
         r"bom.json: the file is UTF-16LE \(byte-order mark at byte 0\).*iconv -f UTF-16 -t UTF-8 .*bom.json"),
        ("nobom.jsonl", json.dumps(GOOD).encode("utf-16-be"),
         r"nobom.jsonl: byte 0 is a NUL byte: the file looks like UTF-16BE.*iconv -f UTF-16BE -t UTF-8"),
        ("latin.jsonl", (json.dumps(GOOD, ensure_ascii=False) + "\n").encode("latin-1"),
         r"latin.jsonl: not UTF-8: byte offset 50 \(bytes e9 3f 22 7d\).*iconv -f \S+ -t UTF-8 .*latin.jsonl"),
        ("deep.json", ("[" * 100_000 + "]" * 100_000).encode(), r"deep.json: JSON nested too deeply"),
        ("deep.jsonl", (json.dumps(GOOD) + "\n" + "[" * 100_000 + "]" * 100_000).encode(),
         r"deep.jsonl: line 2: JSON nested too deeply"),
        ("pretty.json", json.dumps(GOOD, indent=2).encode(),
         r"pretty.json: the file is one JSON object spread over several lines \(a single record: wrap it in \[ \]\)"
         r"; a data file must be a JSON array of records .* or JSON Lines"),
        ("wrapped.json", json.dumps({"data": [GOOD]}, indent=2).encode(),
         r"wrapped.json: .*its key 'data' holds a list: write that list alone"),
    ],
)
def test_unreadable_files_are_one_line_naming_the_fix(tmp_path, llama2_tokenizer_dir, capsys, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    code, errors, _out = run_inspect(path, llama2_tokenizer_dir, capsys)
    assert code == 2
    assert len(errors) == 1
    assert re.search(expected, errors[0]), errors[0]


def test_a_template_without_a_prompt_format_is_one_line(dummy_conversations, llama2_tokenizer_dir, capsys):
    code, errors, _out = run_inspect(dummy_conversations, llama2_tokenizer_dir, capsys, "--template", "chatgpt")
    assert code == 2
    assert errors == ["error: --template 'chatgpt' cannot render a training prompt (it is an API-only template with "
                      "no prompt format); pick a template with a prompt format: vicuna_v1.1, llama-2, alpaca, "
                      "mistral, zephyr, or tokenizer (the one the model was trained with)"]


def cache_entries(cache_dir) -> list[str]:
    """Everything in the token cache but the lock files (empty, harmless)."""
    root = cache_dir / "sft"
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


def test_every_record_dropped_exits_2_and_caches_nothing(dummy_conversations, llama2_tokenizer_dir, private_cache,
                                                         capsys):
    assert cache_entries(private_cache) == []
    code, errors, _out = run_inspect(dummy_conversations, llama2_tokenizer_dir, capsys, "--model_max_length", "30")
    assert code == 2
    assert errors == [f"error: {dummy_conversations}: every record was dropped: 500 valid records all have no "
                      "trainable token within --model_max_length 30 (their assistant replies start after it); "
                      "raise --model_max_length or shorten the prompts"]
    assert cache_entries(private_cache) == []
    code, errors, _out = run_inspect(dummy_conversations, llama2_tokenizer_dir, capsys, "--model_max_length", "30")
    assert (code, len(errors)) == (2, 1)  # the same clear line again, not a failure inside datasets
    assert run_inspect(dummy_conversations, llama2_tokenizer_dir, capsys, "--model_max_length", "512")[0] == 0
    assert len(cache_entries(private_cache)) == 1


def test_an_empty_entry_left_by_an_older_version_is_discarded(dummy_conversations, llama2_tokenizer, private_cache):
    """Versions before this one cached the empty result; the next run then failed inside datasets."""
    from datasets import Dataset

    from llama_hw.data.cache import STATS_FILE, DatasetCache

    first = build(dummy_conversations, llama2_tokenizer, 512, data_cache=True)
    (entry,) = cache_entries(private_cache)
    cache = DatasetCache(entry)
    empty = Dataset.from_dict({"input_ids": [], "labels": []})
    cache.store(empty, {**first.stats.to_dict(), "samples": 0})
    assert (cache.path / STATS_FILE).is_file()
    again = build(dummy_conversations, llama2_tokenizer, 512, data_cache=True)
    assert not again.stats.from_cache and len(again.train_dataset) == 500
    assert cache_entries(private_cache) == [entry]


def test_every_record_invalid_says_how_many_and_what(tmp_path, llama2_tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"conversations": "x"}, {"conversations": []}, ["not an object"]])
    with pytest.raises(DataError, match=r"no usable record: 0 valid, 3 skipped by --on_bad_record skip "
                                        r"\(empty_conversation: 1, not_a_list: 1, not_an_object: 1\); fix the records"):
        build(path, llama2_tokenizer, 512, on_bad_record="skip")


def test_inspect_into_a_file_marks_the_trained_text(dummy_conversations, llama2_tokenizer_dir, capsys, monkeypatch):
    """capsys is not a terminal, like `... > file` or `| less`: the marks must be in the text itself."""
    monkeypatch.setenv("COLUMNS", "1000")  # one line per prompt line, so the test can read it whole
    code, _errors, out = run_inspect(dummy_conversations, llama2_tokenizer_dir, capsys, "--model_max_length", "90")
    assert code == 0
    assert "(green)" not in out and "29 trained (between [[ and ]]), not truncated" in out
    assert "ASSISTANT:[[ I am Vicuna, a language model trained by researchers from Large Model Systems Organization " \
           "(LMSYS).</s>]]USER: Have a nice day! ASSISTANT:[[ You too!</s>]]" in out
    code, _errors, out = run_inspect(dummy_conversations, llama2_tokenizer_dir, capsys, "--model_max_length", "60")
    assert f"truncated (from {CUT_MARK})" in out and "USER: Who are you? ASSISTANT:[[ I am Vicuna" in out


def test_marked_prompt():
    prompt = "USER: hi ASSISTANT: hello there"
    offsets = [(0, 5), (5, 8), (8, 19), (19, 25), (25, 31)]
    spans = trained_spans(offsets, [-100, -100, -100, 7, 8])
    assert spans == [(19, 31)]
    assert marked_prompt(prompt, spans, len(prompt)) == f"USER: hi ASSISTANT:{TRAINED_MARKS[0]} hello there{TRAINED_MARKS[1]}"
    assert marked_prompt(prompt, [(19, 25)], 25) == f"USER: hi ASSISTANT:[[ hello]]{CUT_MARK} there"


def test_file_digest_reads_in_chunks(tmp_path):
    """Python 3.10 has no hashlib.file_digest; the chunked read must give the same digest."""
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 10_000)
    assert file_digest(str(path), chunk_size=4096) == hashlib.sha256(path.read_bytes()).hexdigest()
