"""`llama-hw data inspect`: how a record is rendered, tokenized and masked, and what the data set holds.

    python -m llama_hw.data inspect --data_path F --tokenizer P --template T [--index i] [--json]

The human view prints the rendered prompt with the trained text highlighted, then the data set
statistics; `--json` prints `input_ids`, `labels` and the statistics for scripts and tests.
"""

from __future__ import annotations

import argparse
import json

from llama_hw.data.formats import read_records
from llama_hw.data.text import resolve_data_format
from llama_hw.data.templates import DEFAULT_TEMPLATE
from llama_hw.errors import UsageError

DEFAULT_MAX_LENGTH = 2048


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama-hw data", description="Inspect conversation data or a text corpus.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect", help="show how a record is rendered, tokenized and masked, and data set statistics"
    )
    inspect.add_argument("--data_path", required=True, help="JSON / JSONL file(s), comma-separated")
    inspect.add_argument("--tokenizer", required=True, help="tokenizer or model directory")
    inspect.add_argument("--template", default=DEFAULT_TEMPLATE, help="FastChat template name or 'tokenizer'")
    inspect.add_argument(
        "--index", type=int, default=0, help="record to show: position across the files, after skipped records"
    )
    inspect.add_argument("--model_max_length", type=int, default=DEFAULT_MAX_LENGTH, help="truncation length")
    inspect.add_argument("--on_bad_record", choices=["error", "skip"], default="error")
    inspect.add_argument("--json", action="store_true", help="print input_ids, labels and statistics as JSON")
    inspect.add_argument("--tokens", action="store_true", help="also list every token with its label")
    inspect.add_argument("--no_data_cache", action="store_true", help="do not read or write the token cache")
    inspect.add_argument("--trust_remote_code", action="store_true")
    text = inspect.add_argument_group("text corpora (--data_format text)")
    text.add_argument("--data_format", choices=["auto", "conversations", "text"], default="auto",
                      help="what --data_path holds (default: detected)")
    text.add_argument("--text_cut", choices=["chunk", "window"], default="chunk", help="as in training")
    text.add_argument("--text_per_line", action="store_true", help="one document per line of a .txt file")
    text.add_argument("--seed", type=int, default=42, help="the training run's --seed: windows depend on it")
    text.add_argument("--epochs", type=int, default=3, help="epochs whose windows are shown")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if resolve_data_format(args.data_format, args.data_path) == "text":
        from llama_hw.data.inspect_text import main as inspect_text

        return inspect_text(args)
    # Validate the data before loading transformers: a bad record fails in a second, not ten.
    records = read_records(args.data_path, args.on_bad_record)
    if not 0 <= args.index < len(records):
        raise UsageError(f"--index {args.index} is out of range: the data has {len(records)} usable records")

    from llama_hw.data.encode import encode_conversation
    from llama_hw.data.sft import DataArguments, build_sft_data
    from llama_hw.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer, args.model_max_length, trust_remote_code=args.trust_remote_code)
    data_args = DataArguments(
        data_path=args.data_path,
        template=args.template,
        on_bad_record=args.on_bad_record,
        data_cache=not args.no_data_cache,
    )
    sft = build_sft_data(data_args, tokenizer, args.model_max_length)
    turns = records.conversations[args.index]
    encoded = encode_conversation(turns, tokenizer, sft.template, args.model_max_length)
    file, record_in_file = records.sources[args.index]
    report = {
        "index": args.index,
        "file": file,
        "record_in_file": record_in_file,
        "template": sft.template.name,
        "prompt": sft.template.render(turns).text,
        "input_ids": encoded.input_ids,
        "labels": encoded.labels,
        "trained_tokens": encoded.num_trained,
        "truncated": encoded.truncated,
        "dropped": encoded.num_trained == 0,
        "stats": sft.stats.to_dict(),
    }
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        show(report, tokenizer, sft, args.tokens)
    return 0


TRAINED_MARKS = ("[[", "]]")  # around trained text when the output is not a terminal (a file, a pipe)
CUT_MARK = "~~cut~~"  # where truncation cuts the prompt, in plain output


def trained_spans(offsets, labels) -> list[tuple[int, int]]:
    """Character spans of the trained tokens, adjacent ones merged."""
    spans: list[tuple[int, int]] = []
    for (start, end), label in zip(offsets, labels):
        if label == -100 or start == end:
            continue
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def marked_prompt(prompt: str, spans: list[tuple[int, int]], kept_end: int) -> str:
    """The prompt as plain text: trained spans between TRAINED_MARKS, the truncation point marked."""
    pieces, position = [], 0
    for start, end in spans:
        pieces += [prompt[position:start], TRAINED_MARKS[0], prompt[start:end], TRAINED_MARKS[1]]
        position = end
    pieces.append(prompt[position:])
    text = "".join(pieces)
    if kept_end < len(prompt):
        shift = sum(len(m) for start, _end in spans if start < kept_end for m in TRAINED_MARKS)
        text = text[: kept_end + shift] + CUT_MARK + text[kept_end + shift :]
    return text


def show(report: dict, tokenizer, sft, list_tokens: bool) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    prompt, labels = report["prompt"], report["labels"]
    offsets = tokenizer(
        prompt, add_special_tokens=sft.template.add_special_tokens, return_offsets_mapping=True
    )["offset_mapping"]
    kept_end = max((end for _start, end in offsets[: len(labels)]), default=0)
    spans = trained_spans(offsets, labels)
    if console.is_terminal:
        text = Text(prompt)
        text.stylize("dim strike", kept_end, len(prompt))  # cut by truncation
        for start, end in spans:
            text.stylize("bold black on green", start, end)
        trained, cut = "(green)", "(struck through)"
    else:  # styles are dropped when not on a terminal: mark the text itself
        text = Text(marked_prompt(prompt, spans, kept_end))
        trained, cut = f"(between {TRAINED_MARKS[0]} and {TRAINED_MARKS[1]})", f"(from {CUT_MARK})"
    title = f"record {report['index']} · {report['file']} #{report['record_in_file']} · template {report['template']}"
    console.print(Panel(text, title=title, title_align="left"))
    state = "dropped: no trainable token" if report["dropped"] else "kept"
    console.print(
        Text(f"{len(report['input_ids'])} tokens, {report['trained_tokens']} trained {trained}, "
             f"{'truncated ' + cut if report['truncated'] else 'not truncated'}, {state}")
    )
    if list_tokens:
        tokens = Table("#", "id", "token", "label", box=None)
        for position, (token_id, label) in enumerate(zip(report["input_ids"], labels)):
            style = "green" if label != -100 else None
            piece = tokenizer.convert_ids_to_tokens(token_id)
            tokens.add_row(str(position), str(token_id), repr(piece), str(label), style=style)
        console.print(tokens)
    table = Table(title="data set", show_header=False, title_justify="left")
    for label, value in sft.stats.rows():
        table.add_row(label, value)
    console.print(table)
