"""build_sft_data end to end: the token cache, lazy mode, length grouping, and `inspect`."""

from __future__ import annotations

import json

import pytest
from data_support import build, llama2_tokenizer, private_cache, stories_tokenizer  # noqa: F401 - fixtures

import llama_hw.data.dataset
from llama_hw.data import IGNORE_INDEX
from llama_hw.data.recipe import main as data_main


def test_second_run_reads_the_cache_instead_of_tokenizing(dummy_conversations, llama2_tokenizer, monkeypatch, tmp_path):
    first = build(dummy_conversations, llama2_tokenizer, 2048, data_cache=True)
    assert not first.stats.from_cache

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again although the inputs did not change")

    monkeypatch.setattr(llama_hw.data.dataset, "encode_conversations", no_tokenizing)
    second = build(dummy_conversations, llama2_tokenizer, 2048, data_cache=True)
    assert second.stats.from_cache
    assert {**second.stats.to_dict(), "from_cache": False} == first.stats.to_dict()
    assert second.train_dataset[:] == first.train_dataset[:]

    # Any input that changes the result misses the cache: the length, the template, the file's bytes.
    for changed in ({"max_length": 64}, {"template": "llama-2"}):
        with pytest.raises(AssertionError, match="tokenized again"):
            build(dummy_conversations, llama2_tokenizer, changed.get("max_length", 2048), data_cache=True,
                  template=changed.get("template", "vicuna_v1.1"))  # fmt: skip
    copy = tmp_path / "copy.json"
    copy.write_text(dummy_conversations.read_text()[:-2] + "\n]")  # same records, other bytes
    with pytest.raises(AssertionError, match="tokenized again"):
        build(copy, llama2_tokenizer, 2048, data_cache=True)


def test_lazy_mode_matches_eager_rows(dummy_conversations, llama2_tokenizer):
    eager = build(dummy_conversations, llama2_tokenizer, 2048)
    lazy = build(dummy_conversations, llama2_tokenizer, 2048, lazy_preprocess=True)
    assert len(lazy.train_dataset) == len(eager.train_dataset) == 500
    assert lazy.stats.records == 500 and lazy.stats.tokens is None
    for index in (0, 7, 499):
        assert lazy.train_dataset[index]["input_ids"] == eager.train_dataset[index]["input_ids"]
        assert lazy.train_dataset[index]["labels"] == eager.train_dataset[index]["labels"]
    batch = lazy.data_collator([lazy.train_dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 4


def test_lazy_mode_drops_untrainable_samples_per_batch(dummy_conversations, llama2_tokenizer):
    lazy = build(dummy_conversations, llama2_tokenizer, 46, lazy_preprocess=True)
    features = [lazy.train_dataset[i] for i in range(40)]
    untrainable = [f for f in features if all(label == IGNORE_INDEX for label in f["labels"])]
    assert 0 < len(untrainable) < len(features)
    batch = lazy.data_collator(features)
    assert batch["input_ids"].shape[0] == len(features) - len(untrainable)
    with pytest.raises(Exception, match="no trainable token within model_max_length"):
        lazy.data_collator(untrainable)


def test_group_by_length_uses_the_length_column(dummy_conversations, stories_tokenizer, stories260k_dir, tmp_path):
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sft = build(dummy_conversations, stories_tokenizer, 512)
    assert sft.train_dataset["length"] == [len(ids) for ids in sft.train_dataset["input_ids"]]
    model = LlamaForCausalLM.from_pretrained(stories260k_dir)
    args = TrainingArguments(output_dir=str(tmp_path), train_sampling_strategy="group_by_length",
                             remove_unused_columns=False, per_device_train_batch_size=8, use_cpu=True,
                             report_to=[])  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=sft.train_dataset, data_collator=sft.data_collator)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.lengths == sft.train_dataset["length"]
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_inspect_json_equals_the_pipeline(dummy_conversations, llama2_tokenizer_dir, llama2_tokenizer, capsys):
    index = 3
    assert data_main(["inspect", "--data_path", str(dummy_conversations), "--tokenizer", str(llama2_tokenizer_dir),
                      "--index", str(index), "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    sft = build(dummy_conversations, llama2_tokenizer, 2048, data_cache=True)  # the cache inspect filled
    assert sft.stats.from_cache
    (row,) = [row for row in sft.train_dataset if row["record"] == index]
    assert report["input_ids"] == row["input_ids"]
    assert report["labels"] == row["labels"]
    assert report["stats"] == {**sft.stats.to_dict(), "from_cache": False}
    assert report["trained_tokens"] == sum(label != IGNORE_INDEX for label in row["labels"])
    assert report["prompt"].startswith("A chat between a curious user") and report["prompt"].endswith("</s>")


def test_inspect_human_view(dummy_conversations, llama2_tokenizer_dir, capsys):
    assert data_main(["inspect", "--data_path", str(dummy_conversations), "--tokenizer", str(llama2_tokenizer_dir),
                      "--template", "llama-2", "--model_max_length", "40", "--tokens"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "[INST]" in out and "truncated (from ~~cut~~)" in out  # captured output is not a terminal
    for label in ("records", "trained tokens", "truncated", "dropped (no trainable token)", "length p50/p90/p99/max"):
        assert label in out


def test_fastchat_flags_parse_with_hf_argument_parser():
    from transformers import HfArgumentParser

    from llama_hw.data import DataArguments

    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--data_path", "a.json,b.jsonl", "--lazy_preprocess", "True", "--template", "llama-2", "--packing",
         "--pad_to_multiple_of", "8", "--on_bad_record", "skip", "--no_data_cache"]  # fmt: skip
    )
    assert args == DataArguments(data_path="a.json,b.jsonl", lazy_preprocess=True, template="llama-2", packing=True,
                                 pad_to_multiple_of=8, on_bad_record="skip", data_cache=False)  # fmt: skip
    with pytest.raises(SystemExit):
        HfArgumentParser(DataArguments).parse_args_into_dataclasses(["--data_path", "a", "--on_bad_record", "ignore"])
