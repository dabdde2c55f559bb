"""Training rows cut from a tokenized corpus: one random window per document per epoch, or full chunks.

- `WindowDataset` (`--text_cut window`, PMC-LLaMA's recipe): item i is one window of `window` tokens of
  document i; a document no longer than that is taken whole. The window's start is a hash of
  (seed, epoch, document index) only, never of RNG state consumed in order, so a resumed run, a
  dataloader worker and `data inspect` all draw the same window, and every epoch draws a new one.
- `ChunkDataset` (`--text_cut chunk`): the documents concatenated (each ends with EOS) and cut into rows
  of `row_length` tokens; the last row holds the rest. With `isolate` (`--packing`), position ids
  restart at every document inside a row and its first label is -100, so no document attends to or
  predicts another (the packed collator turns this into per-document attention).

Both are map-style data sets over the documents, so the Trainer's sampler gives every rank its own
share of the indices (no document twice in an epoch). Tokens are read from the memory-mapped Arrow
cache on access; loss is on every token.
"""

from __future__ import annotations

import numpy as np
import torch

from llama_hw.data.encode import IGNORE_INDEX

DEFAULT_SEED = 42  # TrainingArguments' default --seed; the callback passes the run's own
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def window_starts(seed: int, epoch: int, documents, lengths, window: int) -> np.ndarray:
    """Start of each document's window: uniform over [0, length - window], 0 for short documents."""
    documents = np.asarray(documents, dtype=np.uint64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    key = _splitmix64(key ^ np.uint64(epoch))
    draws = _splitmix64(key ^ documents)
    choices = (np.maximum(lengths - window, 0) + 1).astype(np.uint64)
    return (draws % choices).astype(np.int64)


class DocumentTokens:
    """Token access into a documents data set (see corpus.py) without loading it: views of its Arrow buffers.

    Only the data set travels when pickled (to dataloader workers), never the token buffers.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        columns = dataset.with_format("numpy", columns=["length", "rule"])[:]
        rows = np.flatnonzero((columns["rule"] == 0) & (columns["length"] > 0))
        self.rows = rows.astype(np.int64)  # data set row of each document
        self.lengths = columns["length"][rows].astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)])  # document starts in the stream
        self._chunks = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self):
        return {**self.__dict__, "_chunks": None}

    def _views(self):
        if self._chunks is None:
            column = self.dataset.data.column("input_ids")
            chunk_rows, views = [0], []
            for chunk in column.chunks:
                views.append((chunk.offsets.to_numpy(), chunk.values.to_numpy(zero_copy_only=True)))
                chunk_rows.append(chunk_rows[-1] + len(chunk))
            self._chunks = (np.asarray(chunk_rows), views)
        return self._chunks

    def document(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens [start, stop) of document `index` (a read-only view of the cache)."""
        chunk_rows, views = self._views()
        row = int(self.rows[index])
        chunk = int(np.searchsorted(chunk_rows, row, side="right")) - 1
        offsets, values = views[chunk]
        first, last = int(offsets[row - chunk_rows[chunk]]), int(offsets[row - chunk_rows[chunk] + 1])
        stop = last - first if stop is None else min(stop, last - first)
        return values[first + start : first + stop]

    def stream(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of all documents concatenated."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces, position, document = [], start, first
        while position < stop:
            begin = position - int(self.starts[document])
            end = min(stop, int(self.starts[document + 1])) - int(self.starts[document])
            pieces.append(self.document(document, begin, end))
            position += end - begin
            document += 1
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def _tensor(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(values.astype(np.int64))


class WindowDataset(torch.utils.data.Dataset):
    def __init__(self, tokens: DocumentTokens, window: int, seed: int = DEFAULT_SEED, epoch: int = 0):
        self.tokens, self.window, self.seed, self.epoch = tokens, window, seed, epoch

    def __len__(self) -> int:
        return len(self.tokens)

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loader and by WindowEpochCallback at the start of every epoch."""
        self.epoch = int(epoch)

    def starts(self, epoch: int | None = None) -> np.ndarray:
        """Every document's window start for `epoch` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        return window_starts(self.seed, epoch, np.arange(len(self)), self.tokens.lengths, self.window)

    def window_lengths(self) -> np.ndarray:
        return np.minimum(self.tokens.lengths, self.window)

    def __getitem__(self, index: int) -> dict:
        length = self.tokens.lengths[index]
        start = int(window_starts(self.seed, self.epoch, [index], [length], self.window)[0])
        ids = _tensor(self.tokens.document(index, start, start + self.window))
        return {"input_ids": ids, "labels": ids.clone(), "document": index, "start": start}


class ChunkDataset(torch.utils.data.Dataset):
    def __init__(self, tokens: DocumentTokens, row_length: int, isolate: bool = False):
        self.tokens, self.row_length, self.isolate = tokens, row_length, isolate

    def __len__(self) -> int:
        return -(-self.tokens.total // self.row_length)

    def row_lengths(self) -> np.ndarray:
        lengths = np.full(len(self), self.row_length, dtype=np.int64)
        if len(self):
            lengths[-1] = self.tokens.total - (len(self) - 1) * self.row_length
        return lengths

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        begin = index * self.row_length
        end = min(begin + self.row_length, self.tokens.total)
        ids = _tensor(self.tokens.stream(begin, end))
        labels = ids.clone()
        item = {"input_ids": ids, "labels": labels}
        if self.isolate:
            starts = self.tokens.starts  # sorted: two binary searches, not a pass over every document
            first, last = np.searchsorted(starts, begin, side="right"), np.searchsorted(starts, end, side="left")
            inside = starts[first:last] - begin  # documents beginning inside the row
            boundaries = np.concatenate([[0], inside, [end - begin]])
            positions = np.concatenate([np.arange(b - a) for a, b in zip(boundaries[:-1], boundaries[1:])])
            labels[torch.from_numpy(inside.astype(np.int64))] = IGNORE_INDEX
            item["position_ids"] = _tensor(positions)
        return item


def window_epoch_callback(datasets: list[WindowDataset]):
    """A TrainerCallback that gives the window data sets the run's seed and the epoch about to start.

    The epoch comes from the Trainer's state (restored from the checkpoint on resume): the integer part
    of `state.epoch` is the epoch being run, also mid-epoch.
    """
    from transformers import TrainerCallback

    class WindowEpochCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seed = args.data_seed if args.data_seed is not None else args.seed
            for dataset in datasets:
                dataset.seed = seed

        def on_epoch_begin(self, args, state, control, **kwargs):
            for dataset in datasets:
                dataset.set_epoch(int(state.epoch or 0))

    return WindowEpochCallback()
