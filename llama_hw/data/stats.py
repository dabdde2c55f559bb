"""What a data split holds after reading, validation, tokenization, truncation and packing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class DataStats:
    """Counts for one split. Token fields are None in lazy mode, where nothing is tokenized up front."""

    records: int  # valid records read from the files
    skipped: dict[str, int] = field(default_factory=dict)  # rule -> records skipped (--on_bad_record skip)
    samples: int | None = None  # records kept for training
    dropped: int | None = None  # records left with no trainable token after truncation
    truncated: int | None = None  # records cut to model_max_length
    tokens: int | None = None  # tokens of the kept samples, after truncation
    trained_tokens: int | None = None  # tokens whose label is not -100
    length_percentiles: dict[str, int] = field(default_factory=dict)  # "p50", "p90", "p99", "max"
    packed_rows: int | None = None  # rows after --packing
    from_cache: bool = False  # tokenized data came from the on-disk cache

    @classmethod
    def from_arrays(
        cls, records: int, skipped: dict[str, int], lengths, full_lengths, num_trained
    ) -> DataStats:
        lengths, full_lengths, num_trained = (
            np.asarray(values, dtype=np.int64) for values in (lengths, full_lengths, num_trained)
        )
        kept = num_trained > 0
        kept_lengths = lengths[kept]
        percentiles = {}
        if kept_lengths.size:
            percentiles = {f"p{q}": int(np.percentile(kept_lengths, q)) for q in PERCENTILES}
            percentiles["max"] = int(kept_lengths.max())
        return cls(
            records=records,
            skipped=dict(skipped),
            samples=int(kept.sum()),
            dropped=int((~kept).sum()),
            truncated=int((full_lengths > lengths).sum()),
            tokens=int(kept_lengths.sum()),
            trained_tokens=int(num_trained[kept].sum()),
            length_percentiles=percentiles,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a table; unknown values (lazy mode) are shown as "lazy"."""

        def show(value) -> str:
            return "lazy" if value is None else f"{value:,}"

        rows = [
            ("records", show(self.records)),
            ("skipped", ", ".join(f"{rule}: {n}" for rule, n in sorted(self.skipped.items())) or "0"),
            ("samples", show(self.samples)),
            ("dropped (no trainable token)", show(self.dropped)),
            ("truncated", show(self.truncated)),
            ("tokens", show(self.tokens)),
            ("trained tokens", show(self.trained_tokens)),
        ]
        if self.tokens:
            rows.append(("trained share", f"{self.trained_tokens / self.tokens:.1%}"))
        if self.length_percentiles:
            rows.append(("length p50/p90/p99/max", "/".join(str(v) for v in self.length_percentiles.values())))
        if self.packed_rows is not None:
            rows.append(("packed rows", show(self.packed_rows)))
        return rows

    def summary(self) -> str:
        return "; ".join(f"{label} {value}" for label, value in self.rows())


@dataclass
class TextStats:
    """What a text corpus split holds and what one epoch trains on (`--data_format text`)."""

    documents: int  # valid documents read
    skipped: dict[str, int] = field(default_factory=dict)  # rule -> records skipped
    corpus_tokens: int = 0  # every document's tokens (BOS and EOS included)
    cut: str = "chunk"  # "window" (one per document per epoch) or "chunk" (concatenated, cut into rows)
    row_length: int = 0  # model_max_length
    samples: int = 0  # rows per epoch
    tokens: int = 0  # tokens trained per epoch (loss on every token)
    long_documents: int = 0  # documents longer than a row
    length_percentiles: dict[str, int] = field(default_factory=dict)  # document lengths
    packed: bool = False  # chunk rows keep documents apart (--packing)
    from_cache: bool = False
    packed_rows: int | None = None  # the conversations' field; text rows are never re-packed

    @classmethod
    def from_lengths(cls, lengths, cut: str, row_length: int, packed: bool = False, **fields) -> TextStats:
        lengths = np.asarray(lengths, dtype=np.int64)
        total = int(lengths.sum())
        if cut == "window":
            samples, tokens = len(lengths), int(np.minimum(lengths, row_length).sum())
        else:
            samples, tokens = -(-total // row_length), total
        percentiles = {}
        if lengths.size:
            percentiles = {f"p{q}": int(np.percentile(lengths, q)) for q in PERCENTILES}
            percentiles["max"] = int(lengths.max())
        return cls(documents=len(lengths), corpus_tokens=total, cut=cut, row_length=row_length, samples=samples,
                   tokens=tokens, long_documents=int((lengths > row_length).sum()),
                   length_percentiles=percentiles, packed=packed, **fields)

    def to_dict(self) -> dict:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        cut = (f"one random window of {self.row_length} tokens per document per epoch" if self.cut == "window"
               else f"concatenated, rows of {self.row_length} tokens"
               + (", documents kept apart" if self.packed else ""))
        rows = [
            ("documents", f"{self.documents:,}"),
            ("skipped", ", ".join(f"{rule}: {n}" for rule, n in sorted(self.skipped.items())) or "0"),
            ("corpus tokens", f"{self.corpus_tokens:,}"),
            ("cut", cut),
            ("rows per epoch", f"{self.samples:,}"),
            ("tokens per epoch", f"{self.tokens:,}"),
            (f"documents longer than {self.row_length}", f"{self.long_documents:,}"),
        ]
        if self.length_percentiles:
            rows.append(("document length p50/p90/p99/max",
                         "/".join(str(v) for v in self.length_percentiles.values())))
        return rows

    def summary(self) -> str:
        return "; ".join(f"{label} {value}" for label, value in self.rows())
