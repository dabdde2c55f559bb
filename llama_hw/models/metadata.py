"""`llama_hw.json`: what a training run records next to the model or adapter it saves.

The trainer writes it; chat (and anything else that loads the model later) reads it, so that a model
is talked to with the conversation template it was trained on, and an adapter knows its base model.
Known fields: `template` (FastChat conversation template name, required), `base_model` (path or hub
id of the model an adapter or fine-tune started from), `finetuning_type` ("lora" or "full"). Other
JSON-serializable fields are kept as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llama_hw.errors import DataError, UsageError
from llama_hw.utils.files import write_json_atomically

METADATA_FILE = "llama_hw.json"
FORMAT_VERSION = 1


def metadata_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / METADATA_FILE


def write_run_metadata(directory: str | os.PathLike, *, template: str, **fields: Any) -> Path:
    """Write `directory/llama_hw.json` with `template` and `fields` (Paths become strings).

    The file is written to a temporary name and renamed, so a reader never sees half of it.
    """
    if not template or not isinstance(template, str):
        raise UsageError(f"run metadata needs a template name, got {template!r}")
    record = {"format_version": FORMAT_VERSION, "template": template}
    record.update({key: os.fspath(value) if isinstance(value, os.PathLike) else value
                   for key, value in fields.items()})
    path = metadata_path(directory)
    write_json_atomically(path, record)
    return path


def read_run_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The fields of `directory/llama_hw.json`, or {} when the directory has none."""
    path = metadata_path(directory)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); fix or delete it") from err
    if not isinstance(record, dict):
        raise DataError(f"{path} must hold a JSON object, found {type(record).__name__}; fix or delete it")
    return record
