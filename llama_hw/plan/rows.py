"""Row statistics for a plan: full synthetic rows, or the real length distribution of a data set.

With a data set the rows are what llama_hw.data makes of it: dynamic padding pads each random batch to its
longest sample (the expected padded length for each micro batch is drawn from the real lengths with a fixed
seed), packing fills rows of --seq-len best-fit-decreasing (`llama_hw.data.packing`, the trainer's own).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llama_hw.data.packing import best_fit_decreasing
from llama_hw.plan.memory import Rows

DRAWS = 256  # random batches drawn to estimate a micro batch's padded length


@dataclass(frozen=True)
class LengthProfile:
    lengths: np.ndarray  # tokens of every kept sample
    trained_fraction: float  # labelled share of those tokens
    seq_len: int

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def rows(self, packing: bool, micro_batch: int) -> Rows:
        lengths = self.lengths
        if packing:
            bins = best_fit_decreasing(lengths, self.seq_len)
            fill = self.tokens / (len(bins) * self.seq_len)
            context = float((lengths.astype(np.float64) ** 2).sum() / self.tokens)  # per document
            return Rows(self.seq_len, self.seq_len, fill, self.trained_fraction, context)
        rng = np.random.default_rng(0)
        draws = rng.choice(lengths, size=(DRAWS, micro_batch), replace=True)
        padded = draws.max(axis=1).astype(np.float64)
        effective = float(draws.sum() / (padded.sum() * micro_batch))
        return Rows(int(lengths.max()), float(padded.mean()), effective, self.trained_fraction, float(padded.mean()))


def full_rows(seq_len: int) -> Rows:
    """Synthetic rows of --seq-len real tokens, every one labelled (pre-training style)."""
    return Rows(seq_len, seq_len, 1.0, 1.0, float(seq_len))


def profile_from_data(data_path: str, template: str | None, tokenizer_path: str, seq_len: int) -> LengthProfile:
    """Read, validate and tokenize the data set exactly as `llama_hw.train` does (its cache included)."""
    from llama_hw.data.sft import DataArguments, build_sft_data
    from llama_hw.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    arguments = DataArguments(data_path=data_path) if template is None else DataArguments(data_path=data_path,
                                                                                           template=template)  # fmt: skip
    data = build_sft_data(arguments, tokenizer, seq_len)
    return LengthProfile(sample_lengths(data.train_dataset), trained_fraction(data.stats), seq_len)


def sample_lengths(dataset) -> np.ndarray:
    """Tokens of every training sample: the conversations' `length` column, or a text corpus's rows
    (its windows or chunks, as `llama_hw.data.windows` cuts them)."""
    for rows in ("window_lengths", "row_lengths"):
        if hasattr(dataset, rows):
            return np.asarray(getattr(dataset, rows)(), dtype=np.int64)
    return np.asarray(dataset["length"], dtype=np.int64)


def trained_fraction(stats) -> float:
    trained = getattr(stats, "trained_tokens", None)
    return trained / stats.tokens if trained and stats.tokens else 1.0  # text: loss on every token
