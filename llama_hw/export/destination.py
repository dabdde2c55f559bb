"""Where `export` writes: refuse every `--out` whose replacement could destroy something export did not make.

`--overwrite` replaces only an earlier export: a folder that carries export's completion marker
(`llama_hw_export.json`, written last, listing every file the export wrote) and holds nothing else. The
adapter, the base model, the working folder and every folder above them are refused outright, and so is
any other non-empty folder. The new model is written into a hidden sibling folder, renamed into place,
and only then is the earlier export removed, so `--out` always holds one complete model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llama_hw.errors import UsageError
from llama_hw.utils.files import write_json_atomically

EXPORT_MARKER = "llama_hw_export.json"
MARKER_FORMAT = 1
WRITTEN_BY = "llama_hw.export"
NEW_DIRECTORY = "choose a new directory for the merged model"


def relative_files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if not path.is_dir()}


def read_export_marker(folder: Path) -> dict[str, Any] | None:
    """The completion marker of an earlier export in `folder`, or None when there is no valid one."""
    try:
        marker = json.loads((folder / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(marker, dict) and marker.get("written_by") == WRITTEN_BY and isinstance(marker.get("files"), list):
        return marker
    return None


def check_out(out: Path, protected: Mapping[str, Path], overwrite: bool) -> None:
    """Raise UsageError unless writing (with `overwrite`, replacing) `out` can destroy only an earlier export.

    protected: what `out` must neither be nor contain, by the words that name it in the message
    ("--adapter", "--base", "the working folder").
    """
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link; give the real directory or {NEW_DIRECTORY}")
    target = out.resolve()
    for name, path in protected.items():
        guarded = path.resolve()
        if target == guarded:
            raise UsageError(f"--out {out} is {name} itself; {NEW_DIRECTORY}")
        if target in guarded.parents:
            raise UsageError(f"--out {out} contains {name} ({guarded}); {NEW_DIRECTORY}")
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file; {NEW_DIRECTORY}")
    if not overwrite:
        raise UsageError(f"--out {out} already exists; {NEW_DIRECTORY}, or pass --overwrite to replace an "
                         "earlier export")
    present = relative_files(out)
    if not present:
        return  # empty folders hold nothing to lose
    marker = read_export_marker(out)
    if marker is None:
        raise UsageError(f"--out {out} is not empty and has no {EXPORT_MARKER}, so llama_hw export did not write it; "
                         f"--overwrite replaces only an earlier export: {NEW_DIRECTORY}")
    unknown = sorted(present - set(marker["files"]))
    if unknown:
        raise UsageError(f"--out {out} holds {len(unknown)} file(s) the earlier export did not write "
                         f"(e.g. {unknown[0]}); move them out first or {NEW_DIRECTORY}")
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: the earlier export cannot be removed (no write permission); {NEW_DIRECTORY}")


def _missing_parents(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"--out: {folder} is a file, so no directory can be made under it; {NEW_DIRECTORY}")
    return missing


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A new hidden folder beside `out` to write the model into; removed (with any parents made) on failure.

    Made before the model loads, so a read-only or full location is reported before minutes of work.
    """
    made = _missing_parents(out.parent)
    try:
        for folder in reversed(made):
            folder.mkdir()
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as err:
        _remove_empty(made)
        raise UsageError(f"--out {out}: cannot write in {out.parent} ({err.strerror or err}); choose a writable "
                         "location") from None
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(made)
        raise


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def complete(staging: Path, out: Path, record: Mapping[str, Any]) -> None:
    """Write the marker last, then swap `staging` into `out`; an earlier export there goes only after the swap."""
    files = sorted(relative_files(staging) | {EXPORT_MARKER})
    write_json_atomically(staging / EXPORT_MARKER,
                          {"format_version": MARKER_FORMAT, "written_by": WRITTEN_BY, **record, "files": files})
    previous = None
    if out.exists():
        # rename(2) may replace an empty directory: the earlier export moves aside in one step.
        previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, previous)
    try:
        os.replace(staging, out)
    except OSError:
        if previous is not None:
            os.replace(previous, out)
        raise
    if previous is not None:
        shutil.rmtree(previous)
