"""The embedded demo's assets: reproducible, small, valid for the data pipeline, and honestly scored."""

from __future__ import annotations

import json
import string

import pytest
import sentencepiece as spm
import torch

from llama_hw import demo
from llama_hw.data import get_template, load_tokenizer, read_records
from llama_hw.data.encode import IGNORE_INDEX, encode_conversations
from llama_hw.demo import evaluate, generate


def test_assets_are_exactly_what_the_generator_writes(tmp_path):
    for written in generate.generate(tmp_path):
        shipped = demo.DEMO_DIR / written.relative_to(tmp_path)
        assert written.read_bytes() == shipped.read_bytes(), f"{shipped} differs: rerun python -m llama_hw.demo.generate"


def test_package_data_is_small():
    sizes = {path.name: path.stat().st_size for path in (demo.TRAIN_DATA, demo.HELDOUT_DATA, demo.CONFIG_FILE,
                                                          demo.TOKENIZER_FILE)}
    assert sum(sizes.values()) < 1_000_000, sizes


def questions_and_answers(path):
    records = json.loads(path.read_text())
    turns = [turn for record in records for turn in record["conversations"]]
    return list(zip([t["value"] for t in turns[::2]], [t["value"] for t in turns[1::2]]))


def test_puzzles_are_correct_and_held_out_questions_are_unseen():
    train, heldout = questions_and_answers(demo.TRAIN_DATA), questions_and_answers(demo.HELDOUT_DATA)
    for question, answer in train + heldout:
        operation, letters = question.split(": ")
        assert answer.split() == generate.OPERATIONS[operation](letters.split())
        assert set(letters.split()) <= set(string.ascii_lowercase)
    assert not {q for q, _ in train} & {q for q, _ in heldout}
    assert {q.split(":")[0] for q, _ in heldout} == set(generate.OPERATIONS)


def test_data_and_tokenizer_fit_the_pipeline_and_the_demo_settings():
    tokenizer = load_tokenizer(str(demo.MODEL_DIR))
    processor = spm.SentencePieceProcessor(model_file=str(demo.TOKENIZER_FILE))
    text = "reverse: k f a m"
    assert tokenizer(text).input_ids == [processor.bos_id(), *processor.encode(text)]
    vocab_size = json.loads(demo.CONFIG_FILE.read_text())["vocab_size"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)) == (1, 2, vocab_size)
    # Every letter of a reply is its own token, so replies are learnable letter by letter.
    assert len(tokenizer(" ".join(string.ascii_letters), add_special_tokens=False).input_ids) == 52

    records = read_records(f"{demo.TRAIN_DATA},{demo.HELDOUT_DATA}")
    assert len(records) == generate.TRAIN_CONVERSATIONS + generate.HELDOUT_CONVERSATIONS
    encoded = encode_conversations(records.conversations[:200], tokenizer, get_template(demo.DEMO.template))
    assert max(e.full_length for e in encoded) <= demo.DEMO.model_max_length  # nothing is truncated
    first = encoded[0]
    trained = tokenizer.decode([t for t in first.labels if t != IGNORE_INDEX])
    replies = [content for role, content in records.conversations[0] if role == "assistant"]
    assert trained.replace("</s>", " ").split() == " ".join(replies).split()


def test_initial_model_is_seeded_and_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    first = demo.write_initial_model(tmp_path / "a")
    second = demo.write_initial_model(tmp_path / "b")
    assert (first / "tokenizer.model").is_file()
    model_a = AutoModelForCausalLM.from_pretrained(first)
    model_b = AutoModelForCausalLM.from_pretrained(second)
    assert sum(p.numel() for p in model_a.parameters()) < 1_000_000
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name


def test_questions_follow_the_conversation_history():
    conversation = [
        {"from": "human", "value": "reverse: a b c"},
        {"from": "gpt", "value": "c b a"},
        {"from": "human", "value": "upper: x y z"},
        {"from": "gpt", "value": "X Y Z"},
    ]
    first, second = evaluate.questions([conversation], demo.DEMO.template)
    assert (first.text, first.reference, second.text, second.reference) == ("reverse: a b c", "c b a", "upper: x y z", "X Y Z")
    assert first.prompt == "A chat.\nUSER: reverse: a b c\nASSISTANT:"
    assert second.prompt == first.prompt + " c b a</s>USER: upper: x y z\nASSISTANT:"


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    directory = demo.write_initial_model(tmp_path_factory.mktemp("initial"))
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory), load_tokenizer(str(directory))


def test_untrained_model_scores_zero(untrained):
    model, tokenizer = untrained
    conversations = evaluate.load_conversations(demo.HELDOUT_DATA)
    result = evaluate.evaluate(model, tokenizer, demo.DEMO.template, conversations, limit=40, max_new_tokens=12)
    assert (result.correct, result.total) == (0, 40)
    assert result.exact_match == 0.0 and "0/40" in result.summary()
    assert tokenizer.padding_side == "right"  # restored after left-padded generation
