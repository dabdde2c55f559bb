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
