"""Processed / effective / trained token counts, and the attention pairs each layout executes, on hand-made batches."""

from __future__ import annotations

import torch

import pytest

from llama_hw.bench.tokens import TokenCounter, TokenCounts, count_batch
from llama_hw.bench.work import CPU_VARLEN, DENSE, NPU_TND, PER_SEQUENCE, SDPA, WorkLayout

X = -100  # a position without a label


def counts(**batch) -> TokenCounts:
    return TokenCounts.from_list(count_batch(**batch).tolist())


def test_right_padded_batch():
    input_ids = torch.tensor([[1, 5, 6, 7, 0, 0], [1, 5, 6, 7, 8, 9]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    labels = torch.tensor([[X, X, 6, 7, X, X], [X, X, X, 7, 8, 9]])
    got = counts(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    # 12 positions, 10 of text, 5 next-token targets (labels[:, 1:]), 2 sequences; the text's squares 4^2 + 6^2;
    # per sequence a causal kernel computes 4*5/2 + 6*7/2 query/key pairs.
    assert got == TokenCounts(processed=12, effective=10, trained=5, samples=2, effective_squared=52,
                              attention_pairs=10 + 21)  # fmt: skip


RIGHT_PADDED = {"input_ids": torch.ones(2, 6, dtype=torch.long),
                "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])}  # fmt: skip
LEFT_PADDED = {"input_ids": torch.ones(2, 6, dtype=torch.long),
               "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])}  # fmt: skip
FULL_ROWS = {"input_ids": torch.ones(2, 6, dtype=torch.long), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
PACKED = {"input_ids": torch.ones(1, 8, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]]),
          "labels": torch.tensor([[X, 5, 6, X, 7, X, X, X]])}  # fmt: skip


@pytest.mark.parametrize("batch, layout, pairs", [
    # a dense mask computes every pair of both 6-token rows; sdpa takes the dense mask when there is padding
    (RIGHT_PADDED, WorkLayout(DENSE), 2 * 36),
    (RIGHT_PADDED, WorkLayout(SDPA), 2 * 36),
    (RIGHT_PADDED, WorkLayout(PER_SEQUENCE), 10 + 21),
    # varlen_attention splits a padded batch only when the skipped pairs x heads x head size beat the call cost
    (RIGHT_PADDED, WorkLayout(CPU_VARLEN, pair_dims=10**6), 10 + 21),
    (RIGHT_PADDED, WorkLayout(CPU_VARLEN, pair_dims=1), 2 * 36),
    # no padding: sdpa runs is_causal (the triangle of each row), eager still every pair
    (FULL_ROWS, WorkLayout(SDPA), 2 * 21),
    (FULL_ROWS, WorkLayout(DENSE), 2 * 36),
    (FULL_ROWS, WorkLayout(CPU_VARLEN, pair_dims=1), 2 * 21),
    # packed documents of 3 and 2 tokens and a 3-token padding segment: sdpa gets a dense block mask
    (PACKED, WorkLayout(SDPA), 64),
    (PACKED, WorkLayout(PER_SEQUENCE), 6 + 3 + 6),
    (PACKED, WorkLayout(CPU_VARLEN, pair_dims=1), 6 + 3 + 6),
    # npu_fusion_attention: TND per document for right padding and packed rows; left padding runs BNSD
    # with the full mask (every pair), rows without padding the causal triangle either way
    (RIGHT_PADDED, WorkLayout(NPU_TND), 10 + 21),
    (LEFT_PADDED, WorkLayout(NPU_TND), 2 * 36),
    (LEFT_PADDED, WorkLayout(PER_SEQUENCE), 10 + 21),
    (FULL_ROWS, WorkLayout(NPU_TND), 2 * 21),
    (PACKED, WorkLayout(NPU_TND), 6 + 3 + 6),
])  # fmt: skip
def test_attention_pairs_per_layout_by_hand(batch, layout, pairs):
    assert counts(**batch, layout=layout).attention_pairs == pairs


@pytest.mark.parametrize("batch", [RIGHT_PADDED, LEFT_PADDED, FULL_ROWS, PACKED], ids=["right", "left", "full", "packed"])
@pytest.mark.parametrize("layout", [DENSE, SDPA, PER_SEQUENCE, CPU_VARLEN, NPU_TND])
@pytest.mark.parametrize("head_labelled_only", [False, True])
def test_model_flops_never_exceed_the_work_any_layout_executes(batch, layout, head_labelled_only):
    from llama_hw.bench.flops import FlopsModel

    labels = batch.get("labels")
    if labels is None:  # every next token of the text is a target
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, X)
    got = counts(**{**batch, "labels": labels}, layout=WorkLayout(layout, head_labelled_only, pair_dims=1))
    # weights of a bench-20m-like model: the head costs more per row than the layers, attention little
    flops = FlopsModel(body=6 * 11e6, head=6 * 8.2e6, attention_coefficient=12 * 8 * 256)
    assert flops.model_flops(got) <= flops.executed(got, head_labelled_only)


def test_left_padded_batch():
    input_ids = torch.tensor([[0, 0, 1, 5, 6]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1]])
    got = counts(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([[X, X, X, 5, 6]]))
    assert (got.processed, got.effective, got.trained, got.samples) == (5, 3, 2, 1)
    assert (got.attention_pairs, got.effective_squared) == (6, 9)


def test_packed_rows_with_a_padding_segment():
    # row 0: conversations of 3 and 2 tokens, then 3 positions of padding (its own segment, no labels);
    # row 1: one conversation filling the row.
    input_ids = torch.tensor([[1, 5, 6, 1, 7, 0, 0, 0], [1, 5, 6, 7, 8, 9, 4, 3]])
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2], list(range(8))])
    labels = torch.tensor([[X, 5, 6, X, 7, X, X, X], [X, X, 6, 7, 8, X, X, 3]])
    got = counts(input_ids=input_ids, position_ids=position_ids, labels=labels)
    assert (got.processed, got.effective, got.trained, got.samples) == (16, 13, 7, 3)
    assert got.attention_pairs == 6 + 3 + 6 + 36  # every segment's triangle, the padding segment included
    assert got.effective_squared == 9 + 4 + 64


def test_a_packed_row_ending_in_a_real_conversation_has_no_padding():
    position_ids = torch.tensor([[0, 1, 0, 1, 2]])
    labels = torch.tensor([[X, 5, X, X, 9]])
    got = counts(input_ids=torch.ones(1, 5, dtype=torch.long), position_ids=position_ids, labels=labels)
    assert (got.effective, got.samples, got.effective_squared) == (5, 2, 4 + 9)


def test_full_rows_without_mask_are_all_text():
    got = counts(input_ids=torch.ones(2, 4, dtype=torch.long), labels=torch.ones(2, 4, dtype=torch.long))
    assert got == TokenCounts(8, 8, 6, 2, 32, 20)


def test_counts_match_the_pipelines_packed_collator(llama2_tokenizer_dir, shared_dir):
    """Through llama_hw.data: effective = the conversations' tokens, trained = their labels."""
    from llama_hw.data import DataArguments, build_sft_data, load_tokenizer

    tokenizer = load_tokenizer(str(llama2_tokenizer_dir), model_max_length=512)
    alpaca = shared_dir / "data" / "alpaca" / "alpaca_en_demo.json"
    sft = build_sft_data(DataArguments(data_path=str(alpaca), packing=True, data_cache=False), tokenizer, 512)
    rows = [sft.train_dataset[i] for i in range(4)]
    batch = sft.data_collator(rows)
    got = counts(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"])
    assert got.effective == sum(len(row["input_ids"]) for row in rows)
    assert got.processed == batch["input_ids"].numel() > got.effective
    assert got.trained == sum(sum(label != X for label in row["labels"]) for row in rows)
    assert got.samples == sum(row["num_sequences"] for row in rows)


def test_the_counter_adds_up_training_forwards_only():
    from bench_support import tiny_llama

    model = tiny_llama()
    counter = TokenCounter()
    counter.attach(model)
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])}
    model.train()
    model(**batch)
    model(**batch)
    model.eval()
    model(**batch)  # evaluation is not training work
    first = counter.take()
    assert (first.processed, first.effective, first.samples) == (20, 14, 4)
    assert counter.take() == TokenCounts()
    counter.detach()
    model.train()
    model(**batch)
    assert counter.take() == TokenCounts()

