"""The supervised fine-tuning data a Trainer needs: datasets, collator and statistics, from FastChat flags."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from llama_hw.data.cache import DatasetCache, cache_key
from llama_hw.data.collate import DropUntrainable, make_collator
from llama_hw.data.dataset import LazySFTDataset, tokenize_records
from llama_hw.data.formats import Records, read_records, require_files
from llama_hw.data.packing import pack_sequences
from llama_hw.data.stats import DataStats
from llama_hw.data.templates import DEFAULT_TEMPLATE, Template, get_template
from llama_hw.data.tokenizer import tokenizer_fingerprint
from llama_hw.errors import DataError, UsageError


@dataclass
class DataArguments:
    """Data flags, parsed by transformers.HfArgumentParser next to TrainingArguments (FastChat's names)."""

    data_path: str = field(
        metadata={
            "help": "Training data: a JSON / JSONL file, or several separated by commas. Each file's format is "
            "detected: ShareGPT (conversations with from/value), OpenAI (messages with role/content) or "
            "alpaca (instruction/input/output); or a text corpus (see --data_format): .txt files, records "
            "with 'text', directories and glob patterns."
        }
    )
    eval_data_path: str | None = field(
        default=None, metadata={"help": "Evaluation data, same formats as --data_path."}
    )
    lazy_preprocess: bool = field(
        default=False,
        metadata={
            "help": "FastChat's flag. Default (off): every record is tokenized up front, in parallel, and cached "
            "on disk, so later runs start at once and statistics are exact. On: records are rendered and "
            "tokenized when first read (FastChat's meaning); no disk cache, token statistics unknown, and "
            "records with no trainable token are removed per batch. Not with --packing."
        },
    )
    template: str = field(
        default=DEFAULT_TEMPLATE,
        metadata={
            "help": "Conversation template: any FastChat template name (vicuna_v1.1, llama-2, alpaca, ...) or "
            "'tokenizer' for the tokenizer's own chat_template."
        },
    )
    on_bad_record: str = field(
        default="error",
        metadata={
            "help": "What an invalid record does: 'error' stops with its file, index and rule (exit code 2); "
            "'skip' leaves it out and counts it per rule.",
            "choices": ["error", "skip"],
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "Pack several conversations into each row of up to model_max_length tokens, attention kept "
            "within each conversation (per-sequence position ids). Removes padding work."
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad each batch's length up to a multiple of this (8 for tensor cores)."}
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Processes that tokenize (datasets.map num_proc). Default: one process, which already uses "
            "every core inside the Rust tokenizer; more help on very large data sets."
        },
    )
    data_cache: bool = field(
        default=True,
        metadata={
            "help": "Cache tokenized data under $LLAMA_HW_CACHE_DIR (default ~/.cache/llama_hw); "
            "--no_data_cache tokenizes every time and writes nothing."
        },
    )
    data_format: str = field(
        default="auto",
        metadata={
            "help": "conversations, text (a corpus for continued pre-training: .txt files, JSON / JSONL records "
            "with 'text', or directories / globs of them) or auto (detected from the files).",
            "choices": ["auto", "conversations", "text"],
        },
    )
    text_cut: str = field(
        default="chunk",
        metadata={
            "help": "Text data: chunk = documents concatenated (EOS between them) and cut into rows of "
            "model_max_length (with --packing, attention stays within each document); window = one random "
            "window of model_max_length tokens per document per epoch (PMC-LLaMA), drawn from --seed.",
            "choices": ["chunk", "window"],
        },
    )
    text_per_line: bool = field(
        default=False,
        metadata={"help": "Text data: every non-empty line of a .txt file is a document (default: the whole file)."},
    )


@dataclass
class SFTData:
    train_dataset: object  # datasets.Dataset (eager) or LazySFTDataset
    eval_dataset: object | None
    data_collator: Callable
    stats: DataStats
    eval_stats: DataStats | None
    template: Template
    callbacks: list = field(default_factory=list)  # Trainer callbacks the data needs (window epochs)


def build_sft_data(args: DataArguments, tokenizer, model_max_length: int) -> SFTData:
    """Read, validate, tokenize (cached), mask, drop, and optionally pack the train / eval data."""
    from llama_hw.data.pretrain import build_text_data
    from llama_hw.data.text import resolve_data_format

    if resolve_data_format(args.data_format, args.data_path) == "text":
        return build_text_data(args, tokenizer, model_max_length)
    if args.lazy_preprocess and args.packing:
        raise UsageError("--packing needs every length up front; drop --lazy_preprocess")
    template = get_template(args.template, tokenizer)
    train, stats = prepare_split(args.data_path, args, tokenizer, template, model_max_length)
    evaluation, eval_stats = (None, None)
    if args.eval_data_path:
        evaluation, eval_stats = prepare_split(args.eval_data_path, args, tokenizer, template, model_max_length)
    if args.packing:
        train = pack_sequences(train, model_max_length)
        stats.packed_rows = len(train)
        if evaluation is not None:
            evaluation = pack_sequences(evaluation, model_max_length)
            eval_stats.packed_rows = len(evaluation)
    collator = make_collator(
        "packed" if args.packing else "dynamic", tokenizer, model_max_length, args.pad_to_multiple_of
    )
    if args.lazy_preprocess:
        collator = DropUntrainable(collator)
    return SFTData(train, evaluation, collator, stats, eval_stats, template)


def prepare_split(data_path: str, args: DataArguments, tokenizer, template: Template, model_max_length: int):
    """(dataset, DataStats) for one comma-separated list of files, from the cache when it has them."""
    if args.lazy_preprocess:
        records = _read(data_path, args)
        stats = DataStats(records=len(records), skipped=dict(records.skipped))
        return LazySFTDataset(records, tokenizer, template, model_max_length), stats
    workers = args.preprocessing_num_workers
    if not args.data_cache:
        dataset, stats = tokenize_records(_read(data_path, args), tokenizer, template, model_max_length, workers)
        return _require_samples(data_path, dataset, stats, model_max_length)
    settings = {
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": template.name,
        "model_max_length": model_max_length,
        "on_bad_record": args.on_bad_record,
    }
    key = cache_key(require_files(data_path), settings)
    cache = DatasetCache(key)
    with cache.lock():
        cached = cache.load()
        if cached is not None:
            dataset, stats = cached
            return dataset, DataStats(**{**stats, "from_cache": True})
        dataset, stats = tokenize_records(
            _read(data_path, args), tokenizer, template, model_max_length, workers, fingerprint=key
        )
        _require_samples(data_path, dataset, stats, model_max_length)  # before anything is cached
        cache.store(dataset, stats.to_dict())
        dataset, _stats = cache.load()  # memory-mapped, as every later run will see it
        return dataset, stats


def _read(data_path: str, args: DataArguments) -> Records:
    records = read_records(data_path, args.on_bad_record)
    if not len(records):
        skipped = ", ".join(f"{rule}: {n}" for rule, n in sorted(records.skipped.items())) or "none"
        raise DataError(
            f"{data_path}: no usable record: 0 valid, {sum(records.skipped.values())} skipped by --on_bad_record "
            f"skip ({skipped}); fix the records (run with --on_bad_record error to see the first bad one)"
        )
    return records


def _require_samples(data_path: str, dataset, stats: DataStats, model_max_length: int):
    """Refuse a split whose every record was dropped: a Trainer cannot start on an empty data set."""
    if stats.samples:
        return dataset, stats
    skipped = sum(stats.skipped.values())
    raise DataError(
        f"{data_path}: every record was dropped: {stats.records} valid records all have no trainable token "
        f"within --model_max_length {model_max_length} (their assistant replies start after it)"
        + (f", {skipped} more skipped as invalid" if skipped else "")
        + "; raise --model_max_length or shorten the prompts"
    )
