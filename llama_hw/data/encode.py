"""Tokenize rendered conversations and build their labels from character spans.

`input_ids` are `tokenizer(prompt).input_ids` for the rendered prompt: the ids the chat CLI feeds the
model for the same conversation. A token is trained (its label is its id; every other label is -100)
when it covers at least one character of an assistant span from `templates.py`, read from the fast
tokenizer's offset mapping. So a token that merges the space before a reply with its first word
("▁Sure") is trained, and a special token like "</s>" that ends the reply is trained, whatever the
tokenizer does with spaces around special tokens: no token counts are assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llama_hw.data.formats import RecordError, Turn, normalize_conversation
from llama_hw.data.templates import DEFAULT_TEMPLATE, Template, get_template
from llama_hw.errors import DataError

IGNORE_INDEX = -100  # what torch's cross_entropy and transformers' losses skip


@dataclass
class Encoded:
    """One tokenized conversation; `full_length` is its length before truncation."""

    input_ids: list[int]
    labels: list[int]
    full_length: int

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_conversations(
    conversations: Sequence[Sequence[Turn]], tokenizer, template: Template, max_length: int | None = None
) -> list[Encoded]:
    """Render, tokenize (one batched call: the Rust tokenizer spreads it over all cores) and mask."""
    rendered = [template.render(turns) for turns in conversations]
    batch = tokenizer(
        [r.text for r in rendered],
        add_special_tokens=template.add_special_tokens,
        return_offsets_mapping=True,
        return_attention_mask=False,
        verbose=False,  # the "longer than model_max_length" warning: truncation follows below
    )
    encoded = []
    for ids, offsets, prompt in zip(batch["input_ids"], batch["offset_mapping"], rendered):
        labels = np.where(trained_token_mask(offsets, prompt.spans), ids, IGNORE_INDEX).tolist()
        keep = len(ids) if max_length is None else max_length
        encoded.append(Encoded(ids[:keep], labels[:keep], full_length=len(ids)))
    return encoded


def trained_token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """True for each token whose characters overlap a span [start, end).

    A zero-width token (an added BOS, or a "▁" dummy prefix before a CJK character) counts when it sits
    inside a span: it is generated there.
    """
    bounds = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    mask = np.zeros(len(bounds), dtype=bool)
    for span_start, span_end in spans:
        overlaps = (starts < span_end) & (ends > span_start)
        inside = (starts == ends) & (starts >= span_start) & (starts < span_end)
        mask |= overlaps | inside
    return mask


def encode_conversation(
    conversation: Sequence[dict] | Sequence[Turn],
    tokenizer,
    template: str | Template = DEFAULT_TEMPLATE,
    max_length: int | None = None,
) -> Encoded:
    """Render and tokenize ONE conversation: a list of {"role", "content"} or {"from", "value"} dicts.

    Returns `Encoded` with `input_ids`, `labels` (IGNORE_INDEX outside assistant replies) and
    `full_length`; the same ids and labels the training pipeline produces for that record.
    """
    if isinstance(template, str):
        template = get_template(template, tokenizer)
    if conversation and isinstance(conversation[0], tuple):
        turns = list(conversation)
    else:
        try:
            turns = normalize_conversation(list(conversation))
        except RecordError as err:
            raise DataError(f"conversation: {err}") from None
    return encode_conversations([turns], tokenizer, template, max_length)[0]
