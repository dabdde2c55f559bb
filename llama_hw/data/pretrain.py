"""Continued pre-training data (`--data_format text`): corpus -> cached documents -> windows or chunks.

    data = build_text_data(DataArguments(data_path="corpus/", text_cut="window"), tokenizer, 512)

returns the same SFTData the conversation pipeline does (train / eval data sets, collator, statistics),
plus the Trainer callback that tells window data sets the seed and the epoch.
"""

from __future__ import annotations

from llama_hw.data.collate import make_collator
from llama_hw.data.corpus import load_corpus
from llama_hw.data.stats import TextStats
from llama_hw.data.text import expand_paths
from llama_hw.data.windows import ChunkDataset, DocumentTokens, WindowDataset, window_epoch_callback
from llama_hw.errors import UsageError

TEXT_CUTS = ("chunk", "window")
RAW_TEMPLATE = "raw"  # FastChat's template that adds nothing: what chat should use on a pre-trained model


def build_text_data(args, tokenizer, model_max_length: int):
    from llama_hw.data.sft import SFTData
    from llama_hw.data.templates import get_template

    if args.text_cut not in TEXT_CUTS:
        raise UsageError(f"--text_cut must be one of {', '.join(TEXT_CUTS)}, not {args.text_cut!r}")
    if args.packing and args.text_cut == "window":
        raise UsageError("--packing with --text_cut window: windows change every epoch and cannot be packed "
                         "once; use --text_cut chunk --packing, or drop --packing")
    if args.lazy_preprocess:
        raise UsageError("--lazy_preprocess is for conversations; a text corpus is tokenized once into the "
                         "data cache (drop the flag)")
    if model_max_length < 2:
        raise UsageError(f"--model_max_length {model_max_length} is too short for language modelling: use 2 or more")
    train, stats = _split(args.data_path, args, tokenizer, model_max_length)
    evaluation, eval_stats = (None, None)
    if args.eval_data_path:
        evaluation, eval_stats = _split(args.eval_data_path, args, tokenizer, model_max_length)
    collator = make_collator("packed" if args.packing else "dynamic", tokenizer, model_max_length,
                             args.pad_to_multiple_of)
    # A pre-trained model has no conversation format: the run records `raw`, the template chat then uses.
    args.template = RAW_TEMPLATE
    windows = [d for d in (train, evaluation) if isinstance(d, WindowDataset)]
    callbacks = [window_epoch_callback(windows[:1])] if windows else []  # eval windows stay at epoch 0
    return SFTData(train, evaluation, collator, stats, eval_stats, get_template(RAW_TEMPLATE), callbacks)


def _split(data_path: str, args, tokenizer, model_max_length: int):
    files = expand_paths(data_path)
    documents, counts = load_corpus(data_path, files, tokenizer, args.text_per_line, args.on_bad_record,
                                    args.preprocessing_num_workers, use_cache=args.data_cache)
    tokens = DocumentTokens(documents)
    if args.text_cut == "window":
        dataset = WindowDataset(tokens, model_max_length)
    else:
        dataset = ChunkDataset(tokens, model_max_length, isolate=args.packing)
    stats = TextStats.from_lengths(tokens.lengths, args.text_cut, model_max_length, packed=args.packing,
                                   skipped=counts.skipped, from_cache=counts.from_cache)
    return dataset, stats
