"""Read conversation files and validate every record, naming file, record index and rule on failure.

Three record formats, detected per file from the first record that has one of their keys:

- ShareGPT (FastChat): {"conversations": [{"from": "human"|"gpt"|"system"|"user"|"assistant", "value": str}],
  "system": optional str}
- OpenAI: {"messages": [{"role": "system"|"user"|"assistant", "content": str}]}
- alpaca: {"instruction": str, "input": optional str, "output": str, "system": optional str}

A file is a JSON array of records or JSON Lines (one record per line; `.jsonl`, or any file that does not
start with `[`). Every record becomes a list of (role, content) turns with roles "system", "user",
"assistant": an optional system turn, then user / assistant alternating, starting with the user.

This module imports no ML library, so bad data is rejected before transformers is even imported.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llama_hw.data.encoding import decode
from llama_hw.errors import DataError

Turn = tuple[str, str]  # (role, content), role "system", "user" or "assistant"
ROLE_ALIASES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

# rule name -> what it checks (the names appear in error messages and in skip counts)
RULES = {
    "invalid_json": "the line or file is not valid JSON",
    "not_an_object": "a record or a turn is not a JSON object",
    "missing_key": "a required key is absent",
    "non_string": "a text value is not a string",
    "not_a_list": "`conversations` / `messages` is not a list",
    "unknown_role": "a turn's role is not one of human/gpt/system/user/assistant",
    "empty_turn": "a turn's text is empty or only whitespace",
    "empty_conversation": "a record has no user or assistant turn",
    "not_alternating": "turns do not alternate user/assistant after an optional first system turn",
}

SKIP_HINT = "fix the record, or pass --on_bad_record skip to skip bad records"


class RecordError(ValueError):
    """One record breaks one rule; `read_records` adds the file and index."""

    rules = RULES

    def __init__(self, rule: str, detail: str):
        assert rule in self.rules, rule
        super().__init__(f"{rule}: {detail}")
        self.rule = rule


@dataclass(frozen=True)
class RecordFormat:
    name: str
    key: str  # the key that identifies the format


FORMATS = (
    RecordFormat("sharegpt", "conversations"),
    RecordFormat("openai", "messages"),
    RecordFormat("alpaca", "instruction"),
)


@dataclass
class Records:
    """Validated conversations from one or more files, in order, and what was skipped."""

    conversations: list[list[Turn]] = field(default_factory=list)
    sources: list[tuple[str, int]] = field(default_factory=list)  # (file, record index in that file)
    formats: dict[str, str] = field(default_factory=dict)  # file -> detected format
    skipped: Counter = field(default_factory=Counter)  # rule -> records skipped

    def __len__(self) -> int:
        return len(self.conversations)


def split_paths(data_path: str) -> list[str]:
    """`a.json,b.jsonl` -> ["a.json", "b.jsonl"] (FastChat's --data_path takes one file; we take several)."""
    paths = [p.strip() for p in data_path.split(",") if p.strip()]
    if not paths:
        raise DataError("--data_path is empty: give a JSON or JSONL file, or several separated by commas")
    return paths


def require_files(data_path: str) -> list[str]:
    """The paths of `data_path`, each checked to be a file."""
    paths = split_paths(data_path)
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"data file not found: {path} (--data_path / --eval_data_path)")
    return paths


def read_records(data_path: str, on_bad_record: str = "error") -> Records:
    """Read and validate every file of `data_path` (comma-separated); see the module docstring."""
    if on_bad_record not in ("error", "skip"):
        raise DataError(f"--on_bad_record must be 'error' or 'skip', not {on_bad_record!r}")
    records = Records()
    for path in require_files(data_path):
        raw = _raw_records(path)
        fmt = _detect_format(path, raw)
        records.formats[path] = fmt.name
        for index, record in enumerate(raw):
            try:
                if isinstance(record, InvalidLine):
                    raise RecordError("invalid_json", record.detail)
                turns = parse_record(record, fmt.name)
            except RecordError as err:
                if on_bad_record == "error":
                    raise DataError(f"{path}: record {index}: {err}; {SKIP_HINT}") from None
                records.skipped[err.rule] += 1
                continue
            records.conversations.append(turns)
            records.sources.append((path, index))
    return records


@dataclass(frozen=True)
class InvalidLine:
    """A JSON Lines record that does not parse; reported in file order with the other rules."""

    detail: str


def _raw_records(path: str) -> list[object]:
    file = Path(path)
    text = decode(path, file.read_bytes()).lstrip("\ufeff")  # UTF-8 (a byte-order mark is tolerated)
    stripped = text.lstrip()
    if file.suffix != ".jsonl" and stripped.startswith("["):
        try:
            return json.loads(text)
        except RecursionError:
            raise DataError(f"{path}: {_TOO_DEEP}") from None
        except json.JSONDecodeError as err:
            # One broken array loses every record after it, so even skip mode stops here.
            raise DataError(
                f"{path}: invalid_json: line {err.lineno} column {err.colno}: {err.msg} "
                "(a JSON array cannot be partly read, even with --on_bad_record skip)"
            ) from None
    records: list[object] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except RecursionError:
                raise DataError(f"{path}: line {line_number}: {_TOO_DEEP}") from None
            except json.JSONDecodeError as err:
                if line_number == 1 and stripped.startswith("{"):
                    _refuse_single_object(path, text)
                records.append(InvalidLine(f"line {line_number} column {err.colno}: {err.msg}"))
    return records


_TOO_DEEP = ("JSON nested too deeply to read (over ~1000 levels); records must be objects such as "
             '{"conversations": [{"from": "human", "value": "..."}, ...]}')


def _refuse_single_object(path: str, text: str) -> None:
    """A file holding one JSON object over several lines: say what a data file must be instead."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return  # not one object either: report the broken lines as usual
    if isinstance(value, dict):
        lists = [key for key, item in value.items() if isinstance(item, list)]
        if any(fmt.key in value for fmt in FORMATS):
            inside = " (a single record: wrap it in [ ])"
        else:
            inside = f" (its key {lists[0]!r} holds a list: write that list alone)" if lists else ""
        raise DataError(
            f"{path}: the file is one JSON object spread over several lines{inside}; a data file must be a "
            "JSON array of records ([{...}, {...}]) or JSON Lines (one record per line)"
        )


def _detect_format(path: str, raw: Sequence[object]) -> RecordFormat:
    for record in raw:
        if isinstance(record, dict):
            for fmt in FORMATS:
                if fmt.key in record:
                    return fmt
    if not raw:
        raise DataError(f"{path}: the file holds no records")
    keys = " / ".join(repr(f.key) for f in FORMATS)
    raise DataError(
        f"{path}: cannot detect the record format: no record has a {keys} key "
        "(ShareGPT, OpenAI messages or alpaca)"
    )


def parse_record(record: object, fmt: str) -> list[Turn]:
    """One raw record of format `fmt` -> validated turns; raises RecordError naming the rule."""
    if not isinstance(record, dict):
        raise RecordError("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    if fmt == "alpaca":
        turns = _alpaca_turns(record)
    elif fmt == "sharegpt":
        turns = _system_turn(record) + parse_turns(_require(record, "conversations"), "from", "value")
    else:
        turns = parse_turns(_require(record, "messages"), "role", "content")
    check_turns(turns)
    return turns


def parse_turns(items: object, role_key: str, text_key: str) -> list[Turn]:
    if not isinstance(items, list):
        raise RecordError("not_a_list", f"expected a list of turns, got {type(items).__name__}")
    return [parse_turn(item, position, role_key, text_key) for position, item in enumerate(items)]


def parse_turn(item: object, position: int, role_key: str, text_key: str) -> Turn:
    if not isinstance(item, dict):
        raise RecordError("not_an_object", f"turn {position} is a {type(item).__name__}, not an object")
    role = _require(item, role_key, f"turn {position} ")
    text = _require(item, text_key, f"turn {position} ")
    if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
        known = "/".join(ROLE_ALIASES)
        raise RecordError("unknown_role", f"turn {position} has {role_key}={role!r}; expected one of {known}")
    return ROLE_ALIASES[role.lower()], _string(text, f"turn {position} {text_key!r}")


def normalize_conversation(conversation: object) -> list[Turn]:
    """Turns given as dicts with role/content or from/value (mixed is fine) -> validated (role, content)."""
    if not isinstance(conversation, list):
        raise RecordError("not_a_list", f"expected a list of turns, got {type(conversation).__name__}")
    turns = []
    for position, item in enumerate(conversation):
        keys = ("from", "value") if isinstance(item, dict) and "from" in item else ("role", "content")
        turns.append(parse_turn(item, position, *keys))
    check_turns(turns)
    return turns


def check_turns(turns: list[Turn]) -> None:
    for position, (_role, text) in enumerate(turns):
        if not text.strip():
            raise RecordError("empty_turn", f"turn {position} ({turns[position][0]}) is empty")
    body = turns[1:] if turns and turns[0][0] == "system" else turns
    if not body:
        raise RecordError("empty_conversation", "no user or assistant turn")
    for position, (role, _text) in enumerate(body):
        expected = "user" if position % 2 == 0 else "assistant"
        if role != expected:
            offset = len(turns) - len(body)
            where = "only the first turn may be system" if role == "system" else f"expected {expected}"
            raise RecordError("not_alternating", f"turn {position + offset} is {role}; {where}")


def _alpaca_turns(record: dict) -> list[Turn]:
    instruction = _string(_require(record, "instruction"), "'instruction'")
    extra = _string(record.get("input") or "", "'input'")
    output = _string(_require(record, "output"), "'output'")
    # LLaMA-Factory's alpaca reader joins instruction and input with one newline.
    prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
    if not instruction.strip():
        raise RecordError("empty_turn", "'instruction' is empty")
    return _system_turn(record) + [("user", prompt), ("assistant", output)]


def _system_turn(record: dict) -> list[Turn]:
    """FastChat's train_with_template and alpaca records may carry a top-level "system" string."""
    system = record.get("system")
    if system is None or system == "":
        return []
    return [("system", _string(system, "'system'"))]


def _require(mapping: dict, key: str, where: str = "") -> object:
    if key not in mapping:
        raise RecordError("missing_key", f"{where}missing key {key!r}")
    return mapping[key]


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError("non_string", f"{what} is {type(value).__name__}, expected a string")
    return value
