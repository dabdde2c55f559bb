"""`llama-hw data inspect` for a text corpus: documents, the windows drawn, tokens per epoch, lengths.

The windows shown are the ones training draws (same hash of seed, epoch and document index), so
`--seed` must be the training run's `--seed` (or `--data_seed`).
"""

from __future__ import annotations

import json

import numpy as np

from llama_hw.errors import UsageError

PREVIEW_CHARACTERS = 400


def length_histogram(lengths: np.ndarray) -> list[tuple[int, int, int]]:
    """(low, high, documents) per power-of-two bucket of document length [low, high)."""
    if not len(lengths):
        return []
    top = int(np.ceil(np.log2(max(int(lengths.max()), 1) + 1)))
    edges = [0] + [2**k for k in range(1, top + 1)]
    counts, _ = np.histogram(lengths, bins=edges)
    return [(low, high, int(n)) for low, high, n in zip(edges[:-1], edges[1:], counts) if n]


def report(data, index: int, epochs: int, seed: int) -> dict:
    from llama_hw.data.windows import WindowDataset

    dataset = data.train_dataset
    tokens = dataset.tokens
    if not 0 <= index < len(tokens):
        raise UsageError(f"--index {index} is out of range: the corpus has {len(tokens)} documents")
    length = int(tokens.lengths[index])
    result = {"document": index, "length": length, "stats": data.stats.to_dict(),
              "length_histogram": length_histogram(tokens.lengths)}
    if isinstance(dataset, WindowDataset):
        dataset.seed = seed
        windows = []
        for epoch in range(epochs):
            start = int(dataset.starts(epoch)[index])
            windows.append({"epoch": epoch, "start": start, "end": min(start + dataset.window, length)})
        result.update(seed=seed, windows=windows)
    else:
        first, last = int(tokens.starts[index]), int(tokens.starts[index + 1])
        result["rows"] = list(range(first // dataset.row_length, (last - 1) // dataset.row_length + 1))
    return result


def show(result: dict, data, tokenizer) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    tokens = data.train_dataset.tokens
    index, length = result["document"], result["length"]
    if "windows" in result:
        first = result["windows"][0]
        ids = tokens.document(index, first["start"], first["end"])
        where = f"epoch 0 window: tokens {first['start']}-{first['end']} of {length}"
    else:
        ids = tokens.document(index)
        where = f"{length} tokens, in rows {result['rows'][0]}-{result['rows'][-1]}"
    preview = tokenizer.decode(ids.tolist())
    if len(preview) > PREVIEW_CHARACTERS:
        preview = preview[:PREVIEW_CHARACTERS] + " ..."
    console.print(Panel(Text(preview), title=f"document {index} · {where}", title_align="left"))
    if "windows" in result:
        windows = Table("epoch", "start", "end", "tokens", title=f"windows drawn (seed {result['seed']})",
                        title_justify="left")
        for window in result["windows"]:
            windows.add_row(*(str(v) for v in (window["epoch"], window["start"], window["end"],
                                               window["end"] - window["start"])))
        console.print(windows)
    histogram = Table("document length", "documents", title="length distribution", title_justify="left")
    for low, high, count in result["length_histogram"]:
        histogram.add_row(f"{low}-{high - 1}", f"{count:,}")
    console.print(histogram)
    table = Table(title="corpus", show_header=False, title_justify="left")
    for label, value in data.stats.rows():
        table.add_row(label, value)
    console.print(table)


def main(args) -> int:
    from llama_hw.data.sft import DataArguments, build_sft_data
    from llama_hw.data.tokenizer import load_tokenizer

    if args.epochs < 1:
        raise UsageError(f"--epochs must be 1 or more, not {args.epochs}")
    tokenizer = load_tokenizer(args.tokenizer, args.model_max_length, trust_remote_code=args.trust_remote_code)
    data_args = DataArguments(data_path=args.data_path, data_format="text", text_cut=args.text_cut,
                              text_per_line=args.text_per_line, on_bad_record=args.on_bad_record,
                              data_cache=not args.no_data_cache)
    data = build_sft_data(data_args, tokenizer, args.model_max_length)
    result = report(data, args.index, args.epochs, args.seed)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        show(result, data, tokenizer)
    return 0
