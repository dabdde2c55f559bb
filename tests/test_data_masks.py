"""input_ids are what the chat CLI feeds the model; labels cover exactly the assistant replies + their end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_support import alpaca_path, build, fastchat_prompts, llama2_tokenizer, private_cache  # noqa: F401

from llama_hw.data import IGNORE_INDEX, encode_conversation, encode_conversations, get_template, read_records

PIRATE = "You are a pirate. Answer like one."


def expected_labels(tokenizer, template: str, turns) -> tuple[list[int], list[int]]:
    """The oracle, by token counts rather than offsets: render with FastChat, tokenize the generation
    prompt before each reply and the prompt including it; the tokens in between are trained."""
    prompt, steps = fastchat_prompts(template, turns)
    ids = tokenizer(prompt).input_ids
    labels = [IGNORE_INDEX] * len(ids)
    for before, after in steps:
        start, end = len(tokenizer(before).input_ids), len(tokenizer(after).input_ids)
        assert tokenizer(after).input_ids == ids[:end]  # both boundaries tokenize stably in these templates
        assert tokenizer(before).input_ids == ids[:start]
        labels[start:end] = ids[start:end]
    return ids, labels


def rows_by_record(dataset) -> dict[int, dict]:
    return {row["record"]: row for row in dataset}


@pytest.mark.parametrize(
    ("template", "system"),
    [("vicuna_v1.1", None), ("llama-2", None), ("llama-2", PIRATE), ("alpaca", PIRATE)],
)
def test_dummy_conversations_masks(template, system, llama2_tokenizer, dummy_conversations, tmp_path):
    data = dummy_conversations
    if system is not None:  # the same conversations with a system turn, which the template must render
        records = json.loads(dummy_conversations.read_text())
        data = tmp_path / "with_system.json"
        data.write_text(json.dumps([{**record, "system": system} for record in records]))
    sft = build(data, llama2_tokenizer, 2048, template=template)
    assert (sft.stats.records, sft.stats.samples, sft.stats.dropped, sft.stats.truncated) == (500, 500, 0, 0)
    rows = rows_by_record(sft.train_dataset)
    conversations = read_records(str(data)).conversations
    for index, turns in enumerate(conversations):
        ids, labels = expected_labels(llama2_tokenizer, template, turns)
        assert rows[index]["input_ids"] == ids, index
        assert rows[index]["labels"] == labels, index
    trained = sum(sum(label != IGNORE_INDEX for label in row["labels"]) for row in rows.values())
    assert sft.stats.trained_tokens == trained
    assert sft.stats.tokens == sum(len(row["input_ids"]) for row in rows.values())


def test_vicuna_labels_equal_fastchat_train_py(llama2_tokenizer, dummy_conversations):
    """FastChat's own preprocess (string splitting, "-2" offsets) agrees with the span masks on its own
    fixture, where its offsets happen to be right for this tokenizer."""
    from fastchat.train.train import preprocess

    raw = json.loads(dummy_conversations.read_text())[:120]
    # FastChat reads `legacy` (text after a special token gets the dummy prefix, as here) and pads every
    # row to model_max_length; 256 holds the longest of these conversations.
    llama2_tokenizer.legacy, llama2_tokenizer.model_max_length = True, 256
    try:
        theirs = preprocess([record["conversations"] for record in raw], llama2_tokenizer)
    finally:
        del llama2_tokenizer.legacy
        llama2_tokenizer.model_max_length = 2048
    template = get_template("vicuna_v1.1")
    conversations = read_records(str(dummy_conversations)).conversations[:120]
    for row, ours in enumerate(encode_conversations(conversations, llama2_tokenizer, template, 2048)):
        length = len(ours.input_ids)
        assert theirs["input_ids"][row, :length].tolist() == ours.input_ids
        assert theirs["labels"][row, :length].tolist() == ours.labels
        assert (theirs["labels"][row, length:] == IGNORE_INDEX).all()


@pytest.mark.parametrize("language", ["en", "zh"])
def test_alpaca_demo_files_load_and_round_trip(language, llama2_tokenizer, shared_dir):
    path = alpaca_path(shared_dir, language)
    records = read_records(str(path))
    assert records.formats == {str(path): "alpaca"}
    assert len(records) == len(json.loads(path.read_text()))
    sft = build(path, llama2_tokenizer, 2048)
    assert sft.stats.samples + sft.stats.dropped == len(records)
    raw = json.loads(path.read_text())
    for row in list(sft.train_dataset)[:200]:
        record = raw[row["record"]]
        ids = np.asarray(row["input_ids"])
        trained = ids[np.asarray(row["labels"]) != IGNORE_INDEX]
        assert trained[-1] == llama2_tokenizer.eos_token_id  # the reply ends with "</s>", trained
        reply = llama2_tokenizer.decode(trained[:-1].tolist())
        assert reply.strip() == record["output"].strip()
        prompt = llama2_tokenizer.decode(ids.tolist(), skip_special_tokens=True)
        assert record["instruction"].strip() in prompt


def test_tokenizer_chat_template(llama2_tokenizer, dummy_conversations, tmp_path):
    """--template tokenizer: the prompt is apply_chat_template's, tokenized without extra special tokens."""
    tokenizer = llama2_tokenizer.__class__.from_pretrained(_saved(llama2_tokenizer, tmp_path))
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    for turns in read_records(str(dummy_conversations)).conversations[:40]:
        encoded = encode_conversation([{"role": r, "content": c} for r, c in turns], tokenizer, "tokenizer")
        messages = [{"role": r, "content": c} for r, c in turns]
        expected = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert encoded.input_ids == expected
        assert encoded.input_ids[0] == tokenizer.bos_token_id != encoded.input_ids[1]
        replies = [c for r, c in turns if r == "assistant"]
        trained = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
        assert trained.count(tokenizer.eos_token_id) == len(replies)
        assert tokenizer.decode(trained, skip_special_tokens=True).split() == " ".join(replies).split()


def _saved(tokenizer, directory) -> str:
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_one_conversation_api_accepts_both_key_styles(llama2_tokenizer):
    sharegpt = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]
    openai = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    a = encode_conversation(sharegpt, llama2_tokenizer, "vicuna_v1.1")
    b = encode_conversation(openai, llama2_tokenizer, "vicuna_v1.1")
    assert (a.input_ids, a.labels) == (b.input_ids, b.labels)
    prompt, _ = fastchat_prompts("vicuna_v1.1", [("user", "Hi"), ("assistant", "Hello!")])
    assert a.input_ids == llama2_tokenizer(prompt).input_ids
    trained = [i for i, label in zip(a.input_ids, a.labels) if label != IGNORE_INDEX]
    assert trained == llama2_tokenizer("Hello!</s>", add_special_tokens=False).input_ids  # "▁Hello", "!", "</s>"


def test_truncation_and_drops_are_counted(llama2_tokenizer, dummy_conversations):
    """At 46 tokens every record is cut, and those whose first reply starts at 46 or later are dropped
    (vicuna's system prompt alone is 42 tokens)."""
    template = get_template("vicuna_v1.1")
    conversations = read_records(str(dummy_conversations)).conversations
    full = encode_conversations(conversations, llama2_tokenizer, template)
    first_trained = [next(i for i, label in enumerate(e.labels) if label != IGNORE_INDEX) for e in full]
    limit = 46
    sft = build(dummy_conversations, llama2_tokenizer, limit)
    assert sft.stats.truncated == sum(len(e.input_ids) > limit for e in full) > 0
    assert 0 < sft.stats.dropped == sum(start >= limit for start in first_trained) < 500
    assert sft.stats.samples == 500 - sft.stats.dropped == len(sft.train_dataset)
    for row in sft.train_dataset:
        assert len(row["input_ids"]) <= limit and any(label != IGNORE_INDEX for label in row["labels"])
        assert row["input_ids"] == full[row["record"]].input_ids[:limit]
        assert row["labels"] == full[row["record"]].labels[:limit]


def test_every_fastchat_template_that_renders_prompts_trains_only_the_replies(llama2_tokenizer):
    from fastchat.conversation import conv_templates

    from llama_hw.errors import UsageError

    conversation = [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four, of course."},
        {"role": "user", "content": "And three plus two?"},
        {"role": "assistant", "content": "Five."},
    ]
    rejected = set()
    for name in conv_templates:
        try:
            encoded = encode_conversation(conversation, llama2_tokenizer, name)
        except UsageError:
            rejected.add(name)
            continue
        trained = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
        text = llama2_tokenizer.decode(trained, skip_special_tokens=True)
        assert "Four, of course." in text and "Five." in text and "plus" not in text, (name, text)
    # API-only templates have no prompt format; yuan2 rewrites earlier turns as the conversation grows.
    api_only = {name for name, conv in conv_templates.items() if conv.sep_style is None}
    assert rejected == api_only | {"yuan2"}
