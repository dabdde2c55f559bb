"""Checks on a checkpoint's files before they load, and one-line messages when loading still fails.

A model folder can be broken in ways that transformers reports as a traceback from deep inside its
loader: a config.json cut short or hand-edited wrong, a safetensors file whose download or save was
interrupted, a pickled `.bin` that holds more than tensors (torch then suggests `weights_only=False`,
which would run whatever code the pickle names). The checks here are cheap (JSON parsing, and
safetensors' own header validation, which maps the file without reading the tensors), so train, chat,
export and bench run them before anything heavy; `loading_errors` translates what only shows up while
the weights are read.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llama_hw.errors import DataError

CONFIG_FILE = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
REDOWNLOAD = "re-download it, or re-save the model with save_pretrained"
# torch's weights-only unpickler names what it refused: "Unsupported global: GLOBAL argparse.Namespace".
UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def check_checkpoint(directory: str | os.PathLike) -> None:
    """Raise DataError naming the file and the fix if config.json or a safetensors file is broken."""
    folder = Path(directory)
    check_json_file(folder / CONFIG_FILE)
    check_json_file(folder / SAFETENSORS_INDEX)
    check_shards_present(folder)
    for file in sorted(folder.glob("*.safetensors")):
        check_safetensors_file(file)


def check_json_file(file: Path) -> None:
    """A JSON object in `file` (if it exists), else DataError with the parser's position."""
    if not file.is_file():
        return
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{file} is not UTF-8 text (byte {err.start}); {REDOWNLOAD}") from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{file} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno} (character {err.pos}); "
            "fix the file there or re-download the model"
        ) from None
    if not isinstance(record, dict):
        raise DataError(f"{file} must hold a JSON object, found a {type(record).__name__}; fix the file or "
                        "re-download the model")


def check_shards_present(folder: Path) -> None:
    index = folder / SAFETENSORS_INDEX
    if not index.is_file():
        return
    weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    missing = sorted({name for name in weight_map.values() if not (folder / name).is_file()})
    if missing:
        raise DataError(f"{folder} lacks {len(missing)} weight file(s) that {SAFETENSORS_INDEX} lists "
                        f"(e.g. {missing[0]}); finish the download or re-save the model with save_pretrained")


def check_safetensors_file(file: Path) -> None:
    """safetensors' own validation of the header and of the data length it promises."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt"):
            pass
    except SafetensorError as err:
        raise DataError(describe_bad_safetensors(file, str(err))) from None
    except OSError as err:
        raise DataError(f"{file} cannot be read ({err.strerror or err})") from None


def describe_bad_safetensors(file: Path, detail: str) -> str:
    size = file.stat().st_size
    expected = promised_size(file)
    if expected is not None and size < expected:
        return (f"{file} is truncated: {size} of the {expected} bytes its header describes (an interrupted "
                f"download or save); {REDOWNLOAD}")
    why = detail.removeprefix("Error while deserializing header: ")
    return f"{file} is not a valid safetensors file ({why}); {REDOWNLOAD}"


def promised_size(file: Path) -> int | None:
    """The file size a safetensors header describes (8-byte length, JSON header, tensor data), if readable."""
    try:
        with file.open("rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if not 0 < header_length < 100_000_000:
                return None
            header = json.loads(handle.read(header_length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return 8 + header_length + max(ends, default=0)


@contextmanager
def loading_errors(directory: str | os.PathLike) -> Iterator[None]:
    """Turn what reading the weights of `directory` can raise into one DataError line with the fix."""
    folder = Path(directory)
    try:
        yield
    except pickle.UnpicklingError as err:
        raise DataError(refused_pickle_message(folder, str(err))) from None
    except EOFError as err:  # a legacy (non-zip) pickle cut short
        raise DataError(f"{pickle_files(folder)} is truncated ({err}); {REDOWNLOAD}") from None
    except RuntimeError as err:
        if "PytorchStreamReader" in str(err) or "central directory" in str(err):
            raise DataError(f"{pickle_files(folder)} is truncated or corrupt (torch: {str(err).splitlines()[0]}); "
                            f"{REDOWNLOAD}") from None
        raise
    except Exception as err:
        from safetensors import SafetensorError

        if isinstance(err, SafetensorError):
            raise DataError(f"a safetensors file in {folder} is corrupt ({err}); {REDOWNLOAD}") from None
        raise


def pickle_files(folder: Path) -> str:
    files = sorted(folder.glob("*.bin"))
    return str(files[0]) if len(files) == 1 else f"one of the .bin weight files in {folder}"


def refused_pickle_message(folder: Path, detail: str) -> str:
    """What to do about a pickle that needs more than tensors: convert it once, never unpickle it blindly."""
    files = pickle_files(folder)
    found = UNSUPPORTED_GLOBAL.search(detail)
    needs = found.group(1) if found else None
    what = f"objects other than tensors ({needs})" if needs else "objects other than tensors"
    if (folder / "adapter_config.json").is_file():
        advice = f"{adapter_conversion_command(folder, needs)} (it adds adapter_model.safetensors, which is read first)"
    else:
        advice = f"{conversion_command(folder, needs)} and give {folder}-safetensors instead"
    return (f"{files} is a pickle checkpoint holding {what}, and llama_hw unpickles only tensors because anything "
            f"else can run code; if you trust its source, convert it to safetensors once: {advice}")


def _allow(needs: str | None) -> str:
    """torch's documented way to accept one named class in a weights-only load (torch.serialization)."""
    if not needs or "." not in needs:
        return ""
    return f"import {needs.split('.')[0]}; torch.serialization.add_safe_globals([{needs}]); "


def conversion_command(folder: Path, needs: str | None) -> str:
    """A one-line conversion that allows exactly the one class the pickle needs, saves safetensors beside
    the folder with save_pretrained (which handles shards and tied weights) and copies the tokenizer over."""
    source, target = repr(str(folder)), repr(f"{folder}-safetensors")
    code = (
        f"import glob, os, shutil, torch; {_allow(needs)}from transformers import AutoModelForCausalLM as M; "
        f"M.from_pretrained({source}).save_pretrained({target}); "
        f"[shutil.copy(f, {target}) for p in ('tokenizer*', 'special_tokens_map.json', 'added_tokens.json', "
        f"'llama_hw.json') for f in glob.glob(os.path.join({source}, p))]"
    )
    return f"python -c {shlex.quote(code)}"


def adapter_conversion_command(folder: Path, needs: str | None) -> str:
    """The same for a LoRA adapter: its tensors saved as adapter_model.safetensors in the folder."""
    source, target = repr(str(folder / "adapter_model.bin")), repr(str(folder / "adapter_model.safetensors"))
    code = (
        f"import torch; {_allow(needs)}from safetensors.torch import save_file; "
        f"s = torch.load({source}, weights_only=True); "
        f"save_file({{k: v.contiguous() for k, v in s.items() if isinstance(v, torch.Tensor)}}, {target}, "
        "metadata={'format': 'pt'})"
    )
    return f"python -c {shlex.quote(code)}"
