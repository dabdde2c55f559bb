"""Batching on the real stories260K model: padding never changes a sample's loss, packing keeps the loss."""

from __future__ import annotations

import pytest
import torch
from data_support import build, private_cache, stories_tokenizer  # noqa: F401 - fixtures

from llama_hw.data import IGNORE_INDEX, make_collator, pack_sequences
from llama_hw.data.packing import best_fit_decreasing

MAX_LENGTH = 512  # stories260K's context


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A 260K-parameter model gains nothing from more threads; on a shared machine they only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def samples(dummy_conversations, stories_tokenizer):
    """10 tokenized dummy conversations (199-342 tokens with this 512-piece vocabulary)."""
    sft = build(dummy_conversations, stories_tokenizer, MAX_LENGTH)
    return sft.train_dataset.select(range(10))


def stories260k(model_dir, attention: str):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM.from_pretrained(model_dir, attn_implementation=attention, dtype=torch.float32).eval()


def per_sample_losses(model, batch) -> list[torch.Tensor]:
    """Mean cross-entropy over each row's trained tokens, from the logits (the loss a row contributes)."""
    with torch.no_grad():
        logits = model(**batch).logits
    losses = []
    for row_logits, row_labels in zip(logits, batch["labels"]):
        targets = row_labels[1:]
        keep = targets != IGNORE_INDEX
        losses.append(torch.nn.functional.cross_entropy(row_logits[:-1][keep], targets[keep]))
    return losses


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(attention, samples, stories_tokenizer, stories260k_dir):
    model = stories260k(stories260k_dir, attention)
    assert model.config.use_cache  # the packed batch itself turns the cache off; see below
    features = [samples[i] for i in range(len(samples))]
    unpacked = make_collator("dynamic", stories_tokenizer, MAX_LENGTH)(features)
    rows = pack_sequences(samples, MAX_LENGTH)
    assert len(rows) < len(samples) and max(rows["num_sequences"]) > 1
    packed = make_collator("packed", stories_tokenizer, MAX_LENGTH)([rows[i] for i in range(len(rows))])
    assert "attention_mask" not in packed and packed["use_cache"] is False
    with torch.no_grad():
        loss_unpacked = model(**unpacked).loss
        loss_packed = model(**packed).loss
        # With a KV cache transformers skips packed-sequence detection: samples would see each other.
        leaky = model(**{key: value for key, value in packed.items() if key != "use_cache"}).loss
    assert torch.allclose(loss_packed, loss_unpacked, atol=1e-5, rtol=0)
    assert not torch.allclose(leaky, loss_unpacked, atol=1e-3, rtol=0)
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == int((unpacked["labels"] != IGNORE_INDEX).sum())


def test_packed_logits_equal_each_sample_alone(samples, stories_tokenizer, stories260k_dir):
    """Stronger than the loss: every token's logits in a packed row are those of its sample run alone
    (up to float32 rounding of differently shaped matmuls; logits are of order 10)."""
    model = stories260k(stories260k_dir, "sdpa")
    rows = pack_sequences(samples.select(range(6)), MAX_LENGTH)
    row = next(rows[i] for i in range(len(rows)) if rows[i]["num_sequences"] > 1)
    batch = make_collator("packed", stories_tokenizer, MAX_LENGTH)([row])
    with torch.no_grad():
        packed_logits = model(**batch).logits[0]
    starts = [i for i, position in enumerate(row["position_ids"]) if position == 0] + [len(row["input_ids"])]
    for start, end in zip(starts, starts[1:]):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([row["input_ids"][start:end]]), use_cache=False).logits[0]
        assert torch.allclose(packed_logits[start:end], alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("strategy", ["dynamic", "max"])
def test_padding_never_changes_a_samples_loss(strategy, samples, stories_tokenizer, stories260k_dir):
    model = stories260k(stories260k_dir, "sdpa")
    by_length = sorted(range(len(samples)), key=lambda i: samples[i]["length"])
    short, long = samples[by_length[0]], samples[by_length[-1]]
    collate = make_collator(strategy, stories_tokenizer, MAX_LENGTH, pad_to_multiple_of=8)
    alone = collate([short])
    together = collate([long, short])
    assert together["input_ids"].shape[1] % 8 == 0
    assert int(together["attention_mask"][1].sum()) == short["length"] < together["input_ids"].shape[1]
    (loss_alone,) = per_sample_losses(model, alone)
    _, loss_padded = per_sample_losses(model, together)
    assert torch.allclose(loss_alone, loss_padded, atol=1e-5, rtol=0)
    with torch.no_grad():  # and the batch loss of one sample is that sample's loss
        assert torch.allclose(model(**alone).loss, loss_alone, atol=1e-5, rtol=0)
    if strategy == "max":
        assert together["input_ids"].shape == (2, MAX_LENGTH)


def test_trainer_batches_packed_rows(samples, stories_tokenizer, stories260k_dir, tmp_path):
    """Through transformers' Trainer (unused columns removed, inputs prepared) the packed loss holds."""
    from transformers import Trainer, TrainingArguments

    model = stories260k(stories260k_dir, "sdpa")
    rows = pack_sequences(samples, MAX_LENGTH)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=len(rows), use_cpu=True,
                             report_to=[], train_sampling_strategy="sequential")  # fmt: skip
    collate = make_collator("packed", stories_tokenizer, MAX_LENGTH)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss = trainer.compute_loss(model, trainer._prepare_inputs(batch))
        expected = model(**make_collator("dynamic", stories_tokenizer, MAX_LENGTH)(list(samples))).loss
    assert torch.allclose(loss, expected, atol=1e-5, rtol=0)


def test_varlen_boundaries_match_transformers(samples, stories_tokenizer):
    """cu_seq_lens (for flash-attention varlen) are what transformers derives from the position ids."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    rows = pack_sequences(samples, MAX_LENGTH)
    batch = make_collator("packed", stories_tokenizer, MAX_LENGTH)([rows[i] for i in range(3)])
    (cu_q, _cu_k), (max_q, _max_k) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
    assert batch["cu_seq_lens_q"].tolist() == cu_q.tolist()
    assert batch["max_length_q"] == int(max_q)
    lengths = (batch["cu_seq_lens_q"][1:] - batch["cu_seq_lens_q"][:-1]).tolist()
    width = batch["input_ids"].shape[1]
    expected = []
    for i in range(3):  # each row's samples, then its padding as one more segment
        expected += _sequence_lengths(rows[i]["position_ids"])
        expected += [width - rows[i]["length"]] if rows[i]["length"] < width else []
    assert lengths == expected


def _sequence_lengths(position_ids: list[int]) -> list[int]:
    starts = [i for i, position in enumerate(position_ids) if position == 0] + [len(position_ids)]
    return [end - start for start, end in zip(starts, starts[1:])]


def test_best_fit_decreasing_places_every_sample_once():
    lengths = [500, 20, 300, 200, 12, 100, 512, 250, 250, 7, 1]
    bins = best_fit_decreasing(lengths, 512)
    assert sorted(i for members in bins for i in members) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in members) <= 512 for members in bins)
    assert len(bins) == 5  # sum 2152 needs at least 5 rows of 512
    with pytest.raises(ValueError, match="more than the row capacity"):
        best_fit_decreasing([513], 512)


def test_packing_flag_removes_padding(dummy_conversations, stories_tokenizer):
    sft = build(dummy_conversations, stories_tokenizer, MAX_LENGTH, packing=True)
    rows = sft.train_dataset
    assert sft.stats.packed_rows == len(rows) < sft.stats.samples
    assert sum(rows["length"]) == sft.stats.tokens
    assert sum(rows["num_sequences"]) == sft.stats.samples
    # 199-353-token samples mostly pair up in 512-token rows (89% full here), where random batches of 8
    # padded to their longest sample are 77% full.
    assert sft.stats.tokens / (len(rows) * MAX_LENGTH) > 0.85
