"""Tokenize a text corpus once into a memory-mapped Arrow data set of documents, cached on disk.

One row per document: `input_ids` (the tokenizer's ids with its BOS, then EOS, int32), `length`, and
`rule` (0 for a document; a TEXT_RULES code for a record skipped with --on_bad_record skip, with no
tokens). Rows are produced by a generator over the corpus shards and written by `datasets` in batches
(`Dataset.from_generator`, worker processes with --preprocessing_num_workers), so peak host memory
depends on the batch size, not on the corpus. The entry is keyed on the files' bytes, the tokenizer and
the reading flags; not on model_max_length or the cut, which are applied when rows are read, so one cache
serves every window length. Text such as `<s>` inside a document stays text (split_special_tokens).
"""

from __future__ import annotations

import atexit
import inspect
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from llama_hw.data.cache import DatasetCache, cache_key, cache_root
from llama_hw.data.text import TEXT_RULES, Shard, bad_record_error, plan_shards, read_shard
from llama_hw.data.tokenizer import tokenizer_fingerprint
from llama_hw.errors import DataError, LlamaHwError

RULE_CODES = {rule: code for code, rule in enumerate(TEXT_RULES, start=1)}
TOKENIZE_BATCH = 256  # documents per tokenizer call; the Rust tokenizer spreads a call over all cores
WRITER_BATCH = 1000  # rows datasets buffers before writing them to Arrow


@dataclass
class CorpusCounts:
    documents: int
    skipped: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    from_cache: bool = False

    def to_dict(self) -> dict:
        return {"documents": self.documents, "skipped": self.skipped, "tokens": self.tokens}


def document_rows(shards: list[Shard], tokenizer, on_bad_record: str, error_dir: str | None = None,
                  batch_size: int = TOKENIZE_BATCH):
    """Rows for `shards` in order (the generator behind Dataset.from_generator; runs in each worker).

    A bad record in error mode raises DataError; its message is also left in `error_dir`, because an
    exception from a worker process reaches the parent only as datasets' generic DatasetGenerationError.
    """
    pending: list[str] = []

    def encode():
        if not pending:
            return
        ids = tokenizer(pending, add_special_tokens=True, return_attention_mask=False, verbose=False,
                        split_special_tokens=True)["input_ids"]
        for row in ids:
            row = [*row, tokenizer.eos_token_id]
            yield {"input_ids": row, "length": len(row), "rule": 0}
        pending.clear()

    for shard in shards:
        for where, text, err in read_shard(shard):
            if err is not None:
                if on_bad_record == "error":
                    error = bad_record_error(where, err)
                    if error_dir is not None:
                        (Path(error_dir) / f"{shard.order:09d}.error").write_text(str(error), encoding="utf-8")
                    raise error
                yield from encode()  # keep rows in corpus order
                yield {"input_ids": [], "length": 0, "rule": RULE_CODES[err.rule]}
                continue
            pending.append(text)
            if len(pending) >= batch_size:
                yield from encode()
    yield from encode()


def tokenize_corpus(shards: list[Shard], tokenizer, on_bad_record: str, num_proc: int | None,
                    scratch: Path, fingerprint: str | None = None):
    """datasets.Dataset of document rows, written under `scratch` in batches."""
    from datasets import Dataset, Features, Sequence, Value

    features = Features({"input_ids": Sequence(Value("int32")), "length": Value("int32"), "rule": Value("int8")})
    from datasets.exceptions import DatasetGenerationError

    workers = min(num_proc, len(shards)) if num_proc and num_proc > 1 else None
    # `fingerprint` (names the result without hashing the tokenizer) is newer than datasets 3.0, our floor
    named = {"fingerprint": fingerprint} if "fingerprint" in inspect.signature(Dataset.from_generator).parameters else {}
    try:
        return Dataset.from_generator(
            document_rows,
            features=features,
            cache_dir=str(scratch),
            gen_kwargs={"shards": shards, "tokenizer": tokenizer, "on_bad_record": on_bad_record,
                        "error_dir": str(scratch)},
            num_proc=workers if workers and workers > 1 else None,
            writer_batch_size=WRITER_BATCH,
            **named,
        )
    except DatasetGenerationError as err:  # datasets wraps what the generator raised: a bad record
        cause = err.__cause__ or err.__context__
        while cause is not None and not isinstance(cause, LlamaHwError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            reported = sorted(scratch.glob("*.error"))  # from a worker process: the first in corpus order
            if not reported:
                raise
            cause = DataError(reported[0].read_text(encoding="utf-8"))
        raise cause from None


def count(dataset) -> CorpusCounts:
    columns = dataset.with_format("numpy", columns=["length", "rule"])[:]
    rules = columns["rule"]
    names = {code: rule for rule, code in RULE_CODES.items()}
    skipped = {names[int(code)]: int((rules == code).sum()) for code in sorted(set(rules.tolist()) - {0})}
    return CorpusCounts(int((rules == 0).sum()), skipped, int(columns["length"].sum()))


def no_documents_error(data_path: str, counts: CorpusCounts) -> DataError:
    skipped = ", ".join(f"{rule}: {n}" for rule, n in sorted(counts.skipped.items())) or "none"
    return DataError(
        f"{data_path}: no usable document: 0 read, {sum(counts.skipped.values())} skipped ({skipped}); fix the "
        "records (each needs a non-empty 'text') or point --data_path at the corpus; nothing was cached"
    )


def load_corpus(data_path: str, files: list[str], tokenizer, per_line: bool, on_bad_record: str,
                num_proc: int | None, use_cache: bool = True):
    """(documents Dataset, CorpusCounts), from the cache when it holds this corpus and tokenizer."""
    shards = plan_shards(files, per_line)
    if not use_cache:
        scratch = Path(tempfile.mkdtemp(prefix="llama_hw_text."))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        dataset = tokenize_corpus(shards, tokenizer, on_bad_record, num_proc, scratch)
        counts = count(dataset)
        if not counts.documents:
            raise no_documents_error(data_path, counts)
        return dataset, counts
    settings = {
        "kind": "text",
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "per_line": per_line,
        "on_bad_record": on_bad_record,
        "eos_token_id": tokenizer.eos_token_id,
    }
    key = cache_key(files, settings)
    cache = DatasetCache(key, root=cache_root())
    with cache.lock():
        cached = cache.load()
        if cached is not None:
            dataset, stored = cached
            return dataset, CorpusCounts(**stored, from_cache=True)
        scratch = Path(tempfile.mkdtemp(prefix=key + ".tokenizing.", dir=cache.root))
        try:
            dataset = tokenize_corpus(shards, tokenizer, on_bad_record, num_proc, scratch, fingerprint=key)
            counts = count(dataset)
            if not counts.documents:
                raise no_documents_error(data_path, counts)
            cache.store(dataset, counts.to_dict())
            del dataset
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        dataset, _stored = cache.load()  # memory-mapped, as every later run sees it
        return dataset, counts
