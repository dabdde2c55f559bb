"""Checkpoints that are complete or ignored, resuming from the latest complete one, and the final save.

Trainer writes `checkpoint-N/` file by file, from every rank, so a crash while saving leaves a directory
that looks like a checkpoint and cannot load. Here a checkpoint counts only once it holds
`llama_hw_checkpoint.json`, written by rank 0 after every rank finished its part; resuming picks the
latest such checkpoint. The final model goes to a staging directory first and is moved into
`output_dir` file by file, `llama_hw.json` last: an output directory without `llama_hw.json` is not a
finished model.

A complete checkpoint can still be damaged later (a copy cut short, a disk error): before resuming, its
files are checked the cheap way (JSON parses, safetensors headers match the file sizes, torch's zip
archives have their directory) and a damaged one is passed over, with a warning, for the one before.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

from llama_hw.errors import UsageError
from llama_hw.models import METADATA_FILE
from llama_hw.train.checks import check_output_dir_writable
from llama_hw.train.logs import logger
from llama_hw.utils.files import write_json_atomically

CHECKPOINT_MARKER = "llama_hw_checkpoint.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STAGING_DIR = ".llama_hw-final.partial"
RESUME_AUTO = ("auto", "latest", "true", "yes", "1")
RESUME_NEVER = ("false", "no", "none", "0", "")


def mark_complete(checkpoint: Path, step: int, world_size: int) -> None:
    write_json_atomically(checkpoint / CHECKPOINT_MARKER, {"step": step, "world_size": world_size})


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / CHECKPOINT_MARKER).is_file()


def checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N directories in `output_dir`, by step."""
    if not output_dir.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in output_dir.iterdir()
             if path.is_dir() and (match := CHECKPOINT_PATTERN.match(path.name))]
    return [path for _step, path in sorted(found)]


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    complete = [path for path in checkpoints(output_dir) if is_complete(path)]
    return complete[-1] if complete else None


def file_damage(path: Path) -> str | None:
    """What is wrong with one checkpoint file, or None when it looks whole."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            size = path.stat().st_size
            with path.open("rb") as stream:
                (header_size,) = struct.unpack("<Q", stream.read(8))
                if header_size > size - 8:
                    return "truncated (its header runs past the end of the file)"
                header = json.loads(stream.read(header_size))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
            if 8 + header_size + end != size:
                return f"truncated ({size} bytes, its header describes {8 + header_size + end})"
        elif path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path):  # torch.save's archives end with their directory
                pass
    except (OSError, ValueError, KeyError, IndexError, TypeError, struct.error, zipfile.BadZipFile) as err:
        return f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})"
    return None


def checkpoint_damage(checkpoint: Path) -> str | None:
    """'model.safetensors: truncated (...)' for the first damaged file of a checkpoint, or None."""
    if not (checkpoint / "trainer_state.json").is_file():
        return "trainer_state.json is missing"
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file():
            damage = file_damage(path)
            if damage:
                return f"{path.relative_to(checkpoint)}: {damage}"
    return None


def latest_intact_checkpoint(output_dir: Path) -> Path | None:
    """The latest complete checkpoint whose files are whole; damaged later ones are skipped with a warning.

    UsageError when every complete checkpoint is damaged: starting over silently would throw the run away.
    """
    complete = [path for path in checkpoints(output_dir) if is_complete(path)]
    damaged: list[str] = []
    for path in reversed(complete):
        damage = checkpoint_damage(path)
        if damage is None:
            for line in damaged:
                logger.warning(f"{line}; resuming from {path} instead")
            return path
        damaged.append(f"{path} is damaged ({damage})")
    if damaged:
        raise UsageError(f"{damaged[0]} and no earlier checkpoint is whole; pass --resume_from_checkpoint with a "
                         "checkpoint you have restored, or --resume_from_checkpoint False to start over")
    return None


def is_finished_model(output_dir: Path) -> bool:
    return (output_dir / METADATA_FILE).is_file()


def resolve_resume(option: str | None, output_dir: Path, *, overwrite: bool) -> Path | None:
    """The checkpoint to resume from, or None to start fresh.

    option None (the default) resumes from the latest complete checkpoint when there is one, as FastChat's
    train.py does (and as an elastic restart needs); "auto" says so explicitly; "False" starts fresh;
    anything else is the path of a checkpoint.
    """
    word = (option or "").strip().lower()
    if option is not None and word in RESUME_NEVER:
        return None
    if option is None or word in RESUME_AUTO:
        if overwrite and option is None:
            return None
        return latest_intact_checkpoint(output_dir)
    path = Path(option).expanduser()
    if not (path / "trainer_state.json").is_file():
        what = "does not exist" if not path.exists() else "is not a Trainer checkpoint (no trainer_state.json)"
        raise UsageError(f"--resume_from_checkpoint {option} {what}; give a checkpoint-N directory or 'auto'")
    if path.parent.resolve() == output_dir.resolve() and not is_complete(path):
        raise UsageError(
            f"--resume_from_checkpoint {option} was not completely written (no {CHECKPOINT_MARKER}); "
            "use --resume_from_checkpoint auto to take the latest complete one"
        )
    damage = checkpoint_damage(path)
    if damage:
        raise UsageError(f"--resume_from_checkpoint {option} is damaged ({damage}); give an earlier "
                         "checkpoint-N or 'auto'")
    return path


def check_output_dir(output_dir: Path, resume_from: Path | None, *, overwrite: bool) -> None:
    """Refuse an output_dir that cannot take files, and a fresh run over a finished model unless
    --overwrite_output_dir True says so."""
    check_output_dir_writable(output_dir)
    if resume_from is None and is_finished_model(output_dir) and not overwrite:
        raise UsageError(
            f"--output_dir {output_dir} already holds a trained model ({METADATA_FILE}); choose another "
            "--output_dir or pass --overwrite_output_dir True"
        )


def clear_previous_run(output_dir: Path, *, overwrite: bool) -> None:
    """Before a fresh start: drop an old model's marker, so a failed run cannot look finished, and with
    --overwrite_output_dir the old checkpoints, so a later resume cannot pick one of them up."""
    (output_dir / METADATA_FILE).unlink(missing_ok=True)
    if overwrite:
        for checkpoint in checkpoints(output_dir):
            shutil.rmtree(checkpoint)
    shutil.rmtree(staging_dir(output_dir), ignore_errors=True)


def staging_dir(output_dir: Path) -> Path:
    return output_dir / STAGING_DIR


def publish_staged(output_dir: Path) -> None:
    """Move everything saved in the staging directory into `output_dir`; the run metadata goes last."""
    staged = staging_dir(output_dir)
    entries = sorted(staged.iterdir(), key=lambda path: path.name == METADATA_FILE)
    for entry in entries:
        target = output_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    staged.rmdir()
