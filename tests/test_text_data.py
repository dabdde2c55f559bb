"""Text corpora (--data_format text): detection, validation, windows per epoch, chunks, ranks, cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_support import build, private_cache, stories_tokenizer, write_jsonl  # noqa: F401 - fixtures

from llama_hw.cli import module_main
from llama_hw.data.encode import IGNORE_INDEX
from llama_hw.data.text import plan_shards, read_shard, resolve_data_format
from llama_hw.data.windows import ChunkDataset, WindowDataset, window_epoch_callback
from llama_hw.errors import DataError, UsageError

CONVERSATION = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}


@pytest.fixture(scope="module")
def outputs(shared_dir) -> list[str]:
    """Real English text: the alpaca demo's answers, one document each."""
    records = json.loads((shared_dir / "data" / "alpaca" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    return [r["output"] for r in records if r["output"].strip()]


@pytest.fixture
def corpus(tmp_path, outputs):
    return write_jsonl(tmp_path / "corpus.jsonl", [{"text": text, "source": "alpaca"} for text in outputs[:120]])


def encode_document(tokenizer, text: str) -> list[int]:
    return tokenizer(text, split_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]


# -- detection and validation -----------------------------------------------------------------------------

def test_format_is_detected_from_the_files(tmp_path, corpus):
    (tmp_path / "docs").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "docs" / name).write_text("A document.\n", encoding="utf-8")
    conversations = write_jsonl(tmp_path / "chat.jsonl", [CONVERSATION])
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"text": "one"}, {"text": "two"}]), encoding="utf-8")
    assert resolve_data_format("auto", str(corpus)) == "text"
    assert resolve_data_format("auto", str(array)) == "text"
    assert resolve_data_format("auto", str(tmp_path / "docs")) == "text"
    assert resolve_data_format("auto", str(tmp_path / "docs" / "*.txt")) == "text"
    assert resolve_data_format("auto", str(conversations)) == "conversations"
    broken_first = tmp_path / "broken_first.jsonl"
    broken_first.write_text('{"text": \n{"text": "a document"}\n', encoding="utf-8")
    assert resolve_data_format("auto", str(broken_first)) == "text"  # the reader then names line 1
    assert resolve_data_format("text", str(conversations)) == "text"  # as requested
    with pytest.raises(DataError, match=r"mixes a text corpus .*corpus.jsonl.* with conversation data .*chat.jsonl"):
        resolve_data_format("auto", f"{corpus},{conversations}")
    with pytest.raises(DataError, match="matches no file"):
        resolve_data_format("auto", str(tmp_path / "none" / "*.txt"))


# rule -> a bad line placed at line 2 of a JSONL corpus
BAD_LINES = {
    "invalid_json": '{"text": "unterminated',
    "not_an_object": '["a list"]',
    "missing_key": '{"body": "no text key"}',
    "non_string": '{"text": 42}',
    "empty_text": '{"text": "  \\n "}',
}


@pytest.mark.parametrize("rule", sorted(BAD_LINES))
def test_a_bad_record_names_file_line_and_rule(tmp_path, rule, stories260k_dir, capsys):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "good"}\n' + BAD_LINES[rule] + '\n{"text": "good again"}\n', encoding="utf-8")
    argv = ["inspect", "--data_path", str(path), "--tokenizer", str(stories260k_dir), "--data_format", "text"]
    assert module_main("llama_hw.data.recipe", argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {path}: line 2: {rule}: ") and "--on_bad_record skip" in err[-1]


def test_skip_mode_counts_bad_records_and_keeps_the_rest(tmp_path, stories_tokenizer):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(['{"text": "first"}', *BAD_LINES.values(), '{"text": "last"}']) + "\n", encoding="utf-8")
    data = build(path, stories_tokenizer, 64, data_format="text", on_bad_record="skip")
    assert data.stats.documents == 2
    assert data.stats.skipped == {rule: 1 for rule in BAD_LINES}
    assert data.train_dataset.tokens.document(1).tolist() == encode_document(stories_tokenizer, "last")


def test_txt_files_are_one_document_each_or_one_per_line(tmp_path, stories_tokenizer):
    (tmp_path / "a.txt").write_text("First line of a.\nSecond line of a.\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("Only line of b.\n\n", encoding="utf-8")
    whole = build(tmp_path, stories_tokenizer, 64, text_cut="window")
    assert whole.stats.documents == 2
    assert whole.train_dataset.tokens.document(0).tolist() == encode_document(
        stories_tokenizer, "First line of a.\nSecond line of a.\n")
    lines = build(tmp_path, stories_tokenizer, 64, text_cut="window", text_per_line=True)
    assert lines.stats.documents == 3  # the empty line is not a document
    assert lines.train_dataset.tokens.document(2).tolist() == encode_document(stories_tokenizer, "Only line of b.")


def test_encoding_errors_name_the_file_offset_and_iconv(tmp_path, stories_tokenizer):
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("A document in UTF-16.".encode("utf-16"))
    with pytest.raises(DataError, match=r"utf16.txt: the file is UTF-16LE .* iconv -f UTF-16 -t UTF-8"):
        build(utf16, stories_tokenizer, 64, data_format="text")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("good line\n".encode() + "caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt: not UTF-8: byte offset 13 .* iconv -f \S+ -t UTF-8"):
        build(latin, stories_tokenizer, 64, data_format="text", text_per_line=True)


def test_a_large_file_is_read_in_shards_that_keep_line_numbers(tmp_path):
    lines = [f'{{"text": "document number {i}"}}' for i in range(500)]
    lines[401] = '{"text": 7}'
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shards = plan_shards([str(path)], per_line=False, shard_bytes=1000)
    assert len(shards) > 10
    assert shards[0].start == 0 and shards[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in zip(shards, shards[1:]))
    read = [item for shard in shards for item in read_shard(shard)]
    texts = [text for _where, text, _err in read if text is not None]
    assert texts == [f"document number {i}" for i in range(500) if i != 401]
    ((where, _text, err),) = [item for item in read if item[2] is not None]
    assert where == f"{path}: line 402" and err.rule == "non_string"


def test_worker_processes_keep_the_corpus_order(tmp_path, stories_tokenizer, outputs, monkeypatch):
    import llama_hw.data.text

    monkeypatch.setattr(llama_hw.data.text, "SHARD_BYTES", 20_000)  # several shards of one file
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": text} for text in outputs[:300]])
    one = build(path, stories_tokenizer, 64, data_format="text")
    two = build(path, stories_tokenizer, 64, data_format="text", preprocessing_num_workers=2)
    assert len(plan_shards([str(path)], per_line=False)) > 2
    assert np.array_equal(one.train_dataset.tokens.lengths, two.train_dataset.tokens.lengths)
    assert one.train_dataset.tokens.stream(0, one.train_dataset.tokens.total).tolist() == \
        two.train_dataset.tokens.stream(0, two.train_dataset.tokens.total).tolist()


def test_a_bad_record_found_by_a_worker_process_is_one_line(tmp_path, stories_tokenizer, monkeypatch):
    import llama_hw.data.text

    monkeypatch.setattr(llama_hw.data.text, "SHARD_BYTES", 4000)
    lines = [json.dumps({"text": f"document {i} " * 10}) for i in range(600)]
    lines[450] = '{"text": null}'
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}: line 451: non_string: 'text' is NoneType"):
        build(path, stories_tokenizer, 64, data_format="text", preprocessing_num_workers=2)


# -- windows ----------------------------------------------------------------------------------------------

@pytest.fixture
def windows(corpus, stories_tokenizer) -> WindowDataset:
    return build(corpus, stories_tokenizer, 64, text_cut="window", data_cache=True).train_dataset


def epoch_windows(dataset: WindowDataset, epoch: int) -> dict[int, list[int]]:
    dataset.set_epoch(epoch)
    items = [dataset[i] for i in range(len(dataset))]
    return {item["document"]: item["input_ids"].tolist() for item in items}


def test_every_document_gives_one_window_per_epoch(windows, corpus, stories_tokenizer, outputs):
    assert len(windows) == 120
    drawn = epoch_windows(windows, 0)
    assert sorted(drawn) == list(range(120))
    for index, window in drawn.items():
        document = encode_document(stories_tokenizer, outputs[index])
        start = windows[index]["start"]
        assert window == document[start : start + 64]  # a contiguous piece of its own document
        assert len(window) == min(64, len(document))  # short documents whole
        assert all(label == token for label, token in zip(windows[index]["labels"].tolist(), window))


def test_windows_change_between_epochs_and_repeat_for_the_same_seed(windows):
    long_documents = np.flatnonzero(windows.tokens.lengths > 64 + 8)
    assert len(long_documents) > 50
    first, second = windows.starts(0), windows.starts(1)
    assert (first[long_documents] != second[long_documents]).mean() > 0.8
    assert np.array_equal(first, windows.starts(0))
    again = WindowDataset(windows.tokens, 64, seed=windows.seed)
    assert np.array_equal(again.starts(1), second)
    other_seed = WindowDataset(windows.tokens, 64, seed=windows.seed + 1)
    assert (other_seed.starts(0)[long_documents] != first[long_documents]).mean() > 0.8
    assert (first >= 0).all() and (first <= np.maximum(windows.tokens.lengths - 64, 0)).all()


def test_a_resumed_run_draws_the_windows_of_an_uninterrupted_one(windows):
    """The Trainer restores state.epoch from the checkpoint (1.5 = half-way through epoch 1)."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    uninterrupted = {epoch: epoch_windows(windows, epoch) for epoch in (0, 1, 2)}
    resumed = WindowDataset(windows.tokens, 64)  # a fresh process
    callback = window_epoch_callback([resumed])
    args = TrainingArguments(output_dir="unused", seed=7, report_to=[])
    callback.on_train_begin(args, TrainerState(), TrainerControl())
    assert resumed.seed == 7
    resumed.seed = windows.seed
    for epoch, state_epoch in ((1, 1.5), (2, 2.0)):
        callback.on_epoch_begin(args, TrainerState(epoch=state_epoch), TrainerControl())
        assert {i: resumed[i]["input_ids"].tolist() for i in range(len(resumed))} == uninterrupted[epoch]


def test_two_ranks_see_disjoint_documents(windows):
    """Through accelerate's data loader sharding, as the Trainer does on every rank."""
    import torch
    from accelerate.data_loader import prepare_data_loader

    seen = []
    for rank in (0, 1):
        loader = torch.utils.data.DataLoader(
            windows, batch_size=4, sampler=torch.utils.data.RandomSampler(windows, generator=torch.Generator().manual_seed(0)),
            collate_fn=lambda features: [f["document"] for f in features])
        shard = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False,
                                    use_seedable_sampler=True)
        shard.set_epoch(0)
        seen.append([document for batch in shard for document in batch])
    assert len(seen[0]) == len(seen[1]) == 60
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(120))


# -- concatenate and chunk --------------------------------------------------------------------------------

HAND_MADE = ["The cat sat.", "A dog ran far away from home.", "Birds sing.", "Fish swim in the deep blue sea."]


def test_chunk_rows_are_the_concatenated_documents(tmp_path, stories_tokenizer):
    path = write_jsonl(tmp_path / "hand.jsonl", [{"text": text} for text in HAND_MADE])
    stream = [token for text in HAND_MADE for token in encode_document(stories_tokenizer, text)]
    data = build(path, stories_tokenizer, 16, text_cut="chunk")
    rows = [data.train_dataset[i] for i in range(len(data.train_dataset))]
    assert len(rows) == -(-len(stream) // 16) and data.stats.tokens == len(stream)
    assert [token for row in rows for token in row["input_ids"].tolist()] == stream
    assert all(len(row["input_ids"]) == 16 for row in rows[:-1])
    assert all(row["labels"].tolist() == row["input_ids"].tolist() for row in rows)  # loss on every token
    assert stream.count(stories_tokenizer.eos_token_id) == len(HAND_MADE)
    batch = data.data_collator(rows)
    assert batch["input_ids"].shape == (len(rows), 16)
    assert (batch["labels"][-1, len(rows[-1]["input_ids"]):] == IGNORE_INDEX).all()


def test_packed_chunk_rows_keep_documents_apart(tmp_path, stories_tokenizer):
    path = write_jsonl(tmp_path / "hand.jsonl", [{"text": text} for text in HAND_MADE])
    lengths = [len(encode_document(stories_tokenizer, text)) for text in HAND_MADE]
    data = build(path, stories_tokenizer, 16, text_cut="chunk", packing=True)
    dataset: ChunkDataset = data.train_dataset
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for index in range(len(dataset)):
        row = dataset[index]
        begin = index * 16
        positions = row["position_ids"].tolist()
        assert positions[0] == 0  # a document continued from the previous row restarts in this one
        for offset in range(1, len(positions)):
            at_document_start = begin + offset in starts
            assert positions[offset] == (0 if at_document_start else positions[offset - 1] + 1)
            assert (row["labels"][offset] == IGNORE_INDEX) == at_document_start
    batch = data.data_collator([dataset[i] for i in range(len(dataset))])
    assert "cu_seq_lens_q" in batch and "attention_mask" not in batch
    with pytest.raises(UsageError, match="--text_cut chunk --packing"):
        build(path, stories_tokenizer, 16, text_cut="window", packing=True)


# -- cache ------------------------------------------------------------------------------------------------

def test_the_corpus_is_tokenized_once_for_every_length(corpus, stories_tokenizer, private_cache, monkeypatch):
    import llama_hw.data.corpus

    first = build(corpus, stories_tokenizer, 64, data_cache=True)
    assert not first.stats.from_cache
    monkeypatch.setattr(llama_hw.data.corpus, "tokenize_corpus", lambda *a, **k: pytest.fail("tokenized again"))
    second = build(corpus, stories_tokenizer, 128, text_cut="window", data_cache=True)
    assert second.stats.from_cache and second.stats.corpus_tokens == first.stats.corpus_tokens


def test_a_corpus_without_a_document_fails_and_caches_nothing(tmp_path, stories_tokenizer, private_cache):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"text": " "}\n{"body": "x"}\n', encoding="utf-8")
    before = sorted(p.name for p in private_cache.rglob("*"))
    with pytest.raises(DataError, match=r"no usable document: 0 read, 2 skipped \(empty_text: 1, missing_key: 1\)"):
        build(path, stories_tokenizer, 64, data_format="text", on_bad_record="skip", data_cache=True)
    after = [p for p in private_cache.rglob("*") if not p.name.endswith(".lock")]
    assert sorted(p.name for p in after if p.name not in before) == ["sft"]  # the root, and no entry in it


def test_inspect_shows_the_windows_training_draws(corpus, stories260k_dir, windows, capsys):
    argv = ["inspect", "--data_path", str(corpus), "--tokenizer", str(stories260k_dir), "--model_max_length", "64",
            "--text_cut", "window", "--index", "9", "--epochs", "2", "--seed", str(windows.seed), "--json"]
    assert module_main("llama_hw.data.recipe", argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [w["start"] for w in report["windows"]] == [int(windows.starts(e)[9]) for e in (0, 1)]
    assert report["stats"]["tokens"] == int(np.minimum(windows.tokens.lengths, 64).sum())
    assert sum(count for _low, _high, count in report["length_histogram"]) == 120
    assert module_main("llama_hw.data.recipe", argv[:-1]) == 0
    out = capsys.readouterr().out
    for label in ("windows drawn", "length distribution", "tokens per epoch", "documents longer than 64"):
        assert label in out


def test_eval_corpus_gets_fixed_windows_and_its_own_statistics(corpus, tmp_path, stories_tokenizer, outputs):
    held_out = write_jsonl(tmp_path / "held_out.jsonl", [{"text": text} for text in outputs[200:230]])
    data = build(corpus, stories_tokenizer, 64, text_cut="window", eval_data_path=str(held_out))
    assert data.eval_stats.documents == 30 and data.stats.documents == 120
    (callback,) = data.callbacks
    from transformers import TrainerControl, TrainerState, TrainingArguments

    before = data.eval_dataset.starts().copy()
    callback.on_epoch_begin(TrainingArguments(output_dir="unused", report_to=[]), TrainerState(epoch=3.0),
                            TrainerControl())
    assert data.train_dataset.epoch == 3 and data.eval_dataset.epoch == 0  # evaluation compares like with like
    assert np.array_equal(data.eval_dataset.starts(), before)
