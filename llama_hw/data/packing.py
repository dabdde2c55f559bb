"""Pack tokenized samples into rows of at most model_max_length tokens.

Rows are filled best-fit-decreasing (longest sample first, into the fullest row it still fits), so
little is left to pad. Each row keeps its samples apart through `position_ids` that restart at 0 for
every sample: transformers (masking_utils for sdpa / eager, varlen kernels for flash attention) turns
that into attention that never crosses a sample boundary, and `PackedCollator` adds the varlen
boundaries. The first label of every sample is -100, so the last token of one sample is never asked
to predict the first token of the next: the loss of a packed batch equals the unpacked one.
"""

from __future__ import annotations

from bisect import bisect_left, insort

import numpy as np

from llama_hw.data.encode import IGNORE_INDEX


def best_fit_decreasing(lengths, capacity: int) -> list[list[int]]:
    """Group sample indices into bins whose lengths sum to at most `capacity`; members in index order."""
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin) for bins that still have room, sorted
    for index in order:
        size = int(lengths[index])
        if size > capacity:
            raise ValueError(f"sample {index} has {size} tokens, more than the row capacity {capacity}")
        slot = bisect_left(free, (size, -1))
        if slot == len(free):
            bins.append([index])
            room, target = capacity - size, len(bins) - 1
        else:
            room, target = free.pop(slot)
            bins[target].append(index)
            room -= size
        if room > 0:
            insort(free, (room, target))
    return sorted((sorted(members) for members in bins), key=lambda members: members[0])


def pack_sequences(dataset, max_length: int):
    """A datasets.Dataset of packed rows: input_ids, labels, position_ids, length, num_sequences."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    table = dataset.with_format("arrow")[:]
    lengths = table.column("length").to_numpy()
    bins = best_fit_decreasing(lengths, max_length)
    order = np.fromiter((index for members in bins for index in members), dtype=np.int64, count=len(lengths))
    sizes = lengths[order].astype(np.int64)
    starts_in_packed = np.cumsum(sizes) - sizes  # where each sample begins in the packed stream
    total = int(sizes.sum())
    within = np.arange(total, dtype=np.int64) - np.repeat(starts_in_packed, sizes)  # position in its sample

    def gather(column: str) -> np.ndarray:
        lists = table.column(column).combine_chunks()
        offsets = lists.offsets.to_numpy().astype(np.int64)
        values = lists.values.to_numpy()
        return values[np.repeat(offsets[:-1][order], sizes) + within]

    labels = gather("labels")
    labels[starts_in_packed] = IGNORE_INDEX
    row_sizes = np.asarray([int(lengths[members].sum()) for members in bins], dtype=np.int64)
    row_offsets = pa.array(np.concatenate([[0], np.cumsum(row_sizes)]).astype(np.int32))

    def rows(values: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(row_offsets, pa.array(values.astype(np.int32)))

    packed = pa.table(
        {
            "input_ids": rows(gather("input_ids")),
            "labels": rows(labels),
            "position_ids": rows(within),
            "length": pa.array(row_sizes.astype(np.int32)),
            "num_sequences": pa.array([len(members) for members in bins], type=pa.int32()),
        }
    )
    return Dataset(InMemoryTable(packed))
