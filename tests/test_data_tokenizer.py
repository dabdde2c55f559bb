"""load_tokenizer: a bare SentencePiece directory gives SentencePiece's ids, and saving keeps them."""

from __future__ import annotations

import json
import random

import pytest
import sentencepiece
from data_support import alpaca_path, llama2_tokenizer, stories_tokenizer  # noqa: F401 - fixtures

from llama_hw.data import load_tokenizer
from llama_hw.errors import UsageError

# Whitespace runs, leading/trailing spaces, byte-fallback characters and a literal "▁": the cases where
# transformers 5's own conversion of tokenizer.model disagrees with SentencePiece.
TRICKY = [
    "Hello world",
    "a  USER: two spaces",
    "  leading and trailing  ",
    "def f():\n    return 1\n\n\tx = 2",
    "Year   |  Population\n2000   |  6.12",
    "你好，世界！这是一个测试。",
    "emoji 😀 and é and \u3000 and \u00a0 nbsp",
    "literal ▁ underline ▁▁ at end ▁",
    "",
    " ",
]


def corpus(dummy_conversations, shared_dir) -> list[str]:
    texts = list(TRICKY)
    for record in json.loads(dummy_conversations.read_text())[:150]:
        texts += [turn["value"] for turn in record["conversations"]]
    for language in ("en", "zh"):
        for record in json.loads(alpaca_path(shared_dir, language).read_text())[:150]:
            texts += [record["instruction"], record["input"], record["output"]]
    pieces = ["  ", " ", "a", "\n", "\t", "x y", "   z", "1", "你", "é", "😀", "▁", "."]
    rng = random.Random(0)
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))) for _ in range(800)]
    return texts


@pytest.mark.parametrize("which", ["llama2", "stories260K"])
def test_bare_sentencepiece_dir_gives_sentencepiece_ids(
    which, llama2_tokenizer_dir, stories260k_dir, dummy_conversations, shared_dir
):
    directory = llama2_tokenizer_dir if which == "llama2" else stories260k_dir
    tokenizer = load_tokenizer(str(directory), model_max_length=1024)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    texts = corpus(dummy_conversations, shared_dir)
    expected = [[processor.bos_id(), *processor.encode(text)] for text in texts]
    assert tokenizer(texts).input_ids == expected
    if which == "llama2":  # the README's trap: AutoTokenizer gives 10994 ("Hello" without "▁")
        assert tokenizer("Hello").input_ids == [1, 15043]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    assert tokenizer.pad_token_id == tokenizer.unk_token_id  # FastChat: pad = unk when there is no pad
    assert (tokenizer.padding_side, tokenizer.model_max_length) == ("right", 1024)


def test_special_token_strings_in_a_prompt_are_special(llama2_tokenizer):
    """FastChat's templates write "</s>" into the prompt and expect the EOS id there."""
    ids = llama2_tokenizer("Hi ASSISTANT: Hello!</s>USER: Bye").input_ids
    assert ids.count(llama2_tokenizer.eos_token_id) == 1
    assert llama2_tokenizer.decode(ids, skip_special_tokens=True) == "Hi ASSISTANT: Hello! USER: Bye"


@pytest.mark.parametrize("which", ["llama2", "stories260K"])
def test_saved_tokenizer_reloads_with_the_same_ids(which, llama2_tokenizer, stories_tokenizer, tmp_path, shared_dir):
    from transformers import AutoTokenizer

    tokenizer = llama2_tokenizer if which == "llama2" else stories_tokenizer
    tokenizer.save_pretrained(tmp_path)
    texts = TRICKY + ["USER: hi ASSISTANT: there</s>USER: 你好 ASSISTANT:", "<s>[INST] q [/INST] a </s><s>"]
    expected = tokenizer(texts).input_ids
    for reloaded in (load_tokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(str(tmp_path))):
        assert reloaded(texts).input_ids == expected
        assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (1, 2, 0)
        assert reloaded.decode(expected[5], skip_special_tokens=True) == tokenizer.decode(
            expected[5], skip_special_tokens=True
        )


def test_missing_tokenizer_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=f"^tokenizer directory {tmp_path / 'nowhere'} does not exist$"):
        load_tokenizer(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text("{}")
    # Without this check transformers would take the folder for a Hub id and go to the network.
    with pytest.raises(UsageError, match=f"^no tokenizer.model / tokenizer.json in {tmp_path}; copy the tokenizer"):
        load_tokenizer(str(tmp_path))


def test_broken_tokenizer_files_name_the_file(stories_tokenizer, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\xff\xff not a protobuf")
    with pytest.raises(UsageError, match=f"^{tmp_path / 'tokenizer.model'} is not a SentencePiece model"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.model").unlink()
    stories_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "truncation":')
    with pytest.raises(UsageError, match=f"^cannot load the tokenizer in {tmp_path} .*re-download its tokenizer.json"):
        load_tokenizer(str(tmp_path))


def test_padding_side_is_saved_with_the_tokenizer(stories260k_dir, tmp_path):
    from transformers import AutoTokenizer

    assert load_tokenizer(str(stories260k_dir)).padding_side == "right"
    load_tokenizer(str(stories260k_dir), padding_side="left").save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path)).padding_side == "left"
    assert AutoTokenizer.from_pretrained(tmp_path).padding_side == "left"
    assert load_tokenizer(str(tmp_path), padding_side="right").padding_side == "right"
