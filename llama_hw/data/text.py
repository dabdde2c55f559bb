"""Plain-text corpora for continued pre-training: find the files, cut them into shards, read documents.

`--data_path` (comma-separated) entries are files, directories or glob patterns:

- `.txt` files: one document per file, or one per non-empty line with `--text_per_line`;
- JSON Lines (`.jsonl`, or a `.json` that does not start with `[`): one record `{"text": str, ...}` a line;
- a JSON array of such records (read whole: prefer JSON Lines for large corpora);
- a directory: every .txt / .json / .jsonl file below it, in sorted order; a glob: the files it matches.

Records are validated with the same one-line errors as conversations (file, record, rule). Large
line-oriented files are cut into byte-range shards at line starts, so worker processes read one file in
parallel and each shard knows its first line: errors name the file and the line. Nothing here holds
more than one shard's current line in memory. This module imports no ML library.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llama_hw.data.encoding import check_head, decode
from llama_hw.data.formats import FORMATS, SKIP_HINT, RecordError, split_paths
from llama_hw.errors import DataError, UsageError

TEXT_KEY = "text"
DATA_FORMATS = ("auto", "conversations", "text")
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".json", ".jsonl")
GLOB_CHARACTERS = "*?["
SHARD_BYTES = 64 << 20  # a worker reads a line-oriented file in pieces of about this size
READ_BLOCK = 8 << 20
DETECT_LINES = 100  # JSON Lines: the first record that parses within these lines decides the format

TEXT_RULES = {
    "invalid_json": "the line or file is not valid JSON",
    "not_an_object": "a record is not a JSON object",
    "missing_key": "a record has no 'text' key",
    "non_string": "'text' is not a string",
    "empty_text": "a document is empty or only whitespace",
}


class TextRecordError(RecordError):
    """One text record breaks one of the corpus rules."""

    rules = TEXT_RULES


@dataclass(frozen=True)
class Shard:
    """Bytes [start, end) of `path`, read as `kind`; `first_line` is the 1-based line number at `start`."""

    path: str
    kind: str  # "document" (a whole .txt file), "lines" (.txt, one document a line), "jsonl", "json_array"
    start: int = 0
    end: int = -1
    first_line: int = 1
    order: int = 0  # position in the corpus's list of shards


def expand_paths(data_path: str) -> list[str]:
    """Every file named by `data_path`: files as given, directories and globs expanded (sorted)."""
    files: list[str] = []
    for entry in split_paths(data_path):
        if any(ch in entry for ch in GLOB_CHARACTERS):
            matched = sorted(p for p in glob.glob(entry, recursive=True) if Path(p).is_file())
            if not matched:
                raise DataError(f"--data_path pattern {entry} matches no file")
            files += matched
        elif Path(entry).is_dir():
            found = sorted(str(p) for p in Path(entry).rglob("*")
                           if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + JSON_SUFFIXES)
            if not found:
                raise DataError(f"--data_path directory {entry} holds no .txt, .json or .jsonl file")
            files += found
        elif Path(entry).is_file():
            files.append(entry)
        else:
            raise DataError(f"data file not found: {entry} (--data_path / --eval_data_path)")
    return files


def is_text_file(path: str) -> bool:
    return Path(path).suffix.lower() in TEXT_SUFFIXES


def first_record(path: str) -> object | None:
    """The first record of a JSON / JSON Lines file, reading only as much of the file as it takes."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
        check_head(path, head)
        stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        if not stripped.startswith(b"["):
            handle.seek(0)
            for number, line in enumerate(handle):
                if number >= DETECT_LINES:
                    return None
                if line.strip():
                    try:
                        return json.loads(line.decode("utf-8", errors="replace"))
                    except (ValueError, RecursionError):
                        continue  # a bad first line is reported by the reader, with its rule
            return None
        size = 1 << 16
        while True:  # a JSON array: decode its first element from a growing prefix
            handle.seek(0)
            text = handle.read(size).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")[1:].lstrip()
            try:
                return json.JSONDecoder().raw_decode(text)[0]
            except (ValueError, RecursionError):
                if size >= os.path.getsize(path):
                    return None
                size *= 4


def looks_like_text_records(path: str) -> bool:
    record = first_record(path)
    return (
        isinstance(record, dict)
        and TEXT_KEY in record
        and not any(fmt.key in record for fmt in FORMATS)
    )


def resolve_data_format(requested: str, data_path: str) -> str:
    """"text" or "conversations": as requested, or detected from the files (`auto`)."""
    if requested not in DATA_FORMATS:
        raise UsageError(f"--data_format must be one of {', '.join(DATA_FORMATS)}, not {requested!r}")
    if requested != "auto":
        return requested
    entries = [p.strip() for p in data_path.split(",") if p.strip()]
    files = expand_paths(data_path)
    kinds = {path: "text" if is_text_file(path) or looks_like_text_records(path) else "conversations"
             for path in files}
    if any(entry not in kinds for entry in entries):  # a directory or a glob: a corpus
        return "text" if all(kind == "text" for kind in kinds.values()) else _mixed(kinds)
    found = set(kinds.values())
    return found.pop() if len(found) == 1 else _mixed(kinds)


def _mixed(kinds: dict[str, str]) -> str:
    text = next(path for path, kind in kinds.items() if kind == "text")
    other = next(path for path, kind in kinds.items() if kind != "text")
    raise DataError(
        f"--data_path mixes a text corpus ({text}) with conversation data ({other}): train on one kind per run, "
        "or pass --data_format text / conversations to read every file as that kind"
    )


def plan_shards(files: list[str], per_line: bool, shard_bytes: int | None = None) -> list[Shard]:
    """Shards in file order; a line-oriented file larger than `shard_bytes` is cut at line starts."""
    shard_bytes = shard_bytes or SHARD_BYTES
    shards: list[Shard] = []
    for path in files:
        kind = ("lines" if per_line else "document") if is_text_file(path) else _json_kind(path)
        size = os.path.getsize(path)
        if kind in ("document", "json_array") or size <= shard_bytes:
            shards.append(Shard(path, kind, 0, size, 1))
            continue
        shards += _line_shards(path, kind, size, shard_bytes)
    return [dataclasses.replace(shard, order=order) for order, shard in enumerate(shards)]


def _json_kind(path: str) -> str:
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    check_head(path, head)
    if Path(path).suffix.lower() != ".jsonl" and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return "json_array"
    return "jsonl"


def _line_shards(path: str, kind: str, size: int, shard_bytes: int) -> list[Shard]:
    """Cut at the first line start at or after every multiple of shard_bytes; count lines up to each cut."""
    cuts = [0]
    with open(path, "rb") as handle:
        for target in range(shard_bytes, size, shard_bytes):
            if target <= cuts[-1]:
                continue
            handle.seek(target - 1)
            handle.readline()  # to the end of the line holding byte target-1: the next line starts a shard
            position = handle.tell()
            if position < size:
                cuts.append(position)
        cuts.append(size)
        lines_before = [1]
        handle.seek(0)
        counted, position = 0, 0
        for cut in cuts[1:-1]:
            while position < cut:
                block = handle.read(min(READ_BLOCK, cut - position))
                counted += block.count(b"\n")
                position += len(block)
            lines_before.append(counted + 1)
    return [Shard(path, kind, start, end, line) for start, end, line in zip(cuts[:-1], cuts[1:], lines_before)]


def iter_lines(shard: Shard) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset, line bytes without the newline) for the shard's lines."""
    line_number, offset = shard.first_line, shard.start
    with open(shard.path, "rb") as handle:
        handle.seek(shard.start)
        remaining = shard.end - shard.start
        rest = b""
        while remaining > 0:
            block = handle.read(min(READ_BLOCK, remaining))
            if not block:
                break
            remaining -= len(block)
            pieces = (rest + block).split(b"\n")
            rest = pieces.pop()
            for piece in pieces:
                yield line_number, offset, piece
                line_number, offset = line_number + 1, offset + len(piece) + 1
        if rest:
            yield line_number, offset, rest


Read = tuple[str, "str | None", "TextRecordError | None"]


def read_shard(shard: Shard) -> Iterator[Read]:
    """(where, text, None) per document, or (where, None, error) per bad record; `where` names it."""
    if shard.kind == "document":
        text = decode(shard.path, Path(shard.path).read_bytes())
        yield from _checked(shard.path, lambda: text)
        return
    if shard.kind == "json_array":
        yield from _json_array(shard.path)
        return
    for line_number, offset, raw in iter_lines(shard):
        if not raw.strip():
            continue
        line = decode(shard.path, raw, base_offset=offset or 0).lstrip("\ufeff")
        where = f"{shard.path}: line {line_number}"
        if shard.kind == "lines":
            yield from _checked(where, lambda: line)
        else:
            yield from _checked(where, lambda: _record_text(_parse_json(line, "")))


def _checked(where: str, text_of) -> Iterator[Read]:
    try:
        text = text_of()
        if not text.strip():
            raise TextRecordError("empty_text", "the document is empty or only whitespace")
    except TextRecordError as err:
        yield where, None, err
        return
    yield where, text, None


def _json_array(path: str) -> Iterator[Read]:
    records = _parse_json(decode(path, Path(path).read_bytes()), f"{path}: ", whole_file=True)
    if not isinstance(records, list):
        raise DataError(f"{path}: the top-level JSON value must be a list of records or JSON Lines")
    for index, record in enumerate(records):
        yield from _checked(f"{path}: record {index}", lambda: _record_text(record))


def _parse_json(text: str, where: str, whole_file: bool = False) -> object:
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"{where}JSON nested too deeply to read (over ~1000 levels): a record must be a flat "
                        "object such as {\"text\": \"...\"}") from None
    except json.JSONDecodeError as err:
        if whole_file:
            raise DataError(f"{where}invalid_json: line {err.lineno} column {err.colno}: {err.msg} (a JSON array "
                            "cannot be partly read, even with --on_bad_record skip)") from None
        raise TextRecordError("invalid_json", f"column {err.colno}: {err.msg}") from None


def _record_text(record: object) -> str:
    if not isinstance(record, dict):
        raise TextRecordError("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    if TEXT_KEY not in record:
        raise TextRecordError("missing_key", f"missing key {TEXT_KEY!r}")
    text = record[TEXT_KEY]
    if not isinstance(text, str):
        raise TextRecordError("non_string", f"'text' is {type(text).__name__}, expected a string")
    return text


def bad_record_error(where: str, err: TextRecordError) -> DataError:
    return DataError(f"{where}: {err}; {SKIP_HINT}")
