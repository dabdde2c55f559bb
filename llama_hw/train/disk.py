"""A full disk while saving: one line naming the disk, the path and the bytes needed.

torch.save reports a full disk as `RuntimeError: basic_ios::clear: iostream error`, "file write failed"
or "[enforce fail at inline_container.cc] unexpected pos", safetensors as an I/O error with OS error 28,
plain writes as OSError(ENOSPC). A save that fails with ENOSPC, with words that say so, or with any error
while the disk has less space left than the save needs becomes `DiskFull`. What was being written stays
incomplete and is never taken for finished: a checkpoint without its marker is ignored on resume, and
the final model is staged and published only once whole.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from llama_hw.errors import LlamaHwError
from llama_hw.train.checks import nearest_existing

# How the writers spell "no space left" (or a quota) when they do not keep the errno.
NO_SPACE_WORDS = ("no space left", "os error 28", "storagefull", "disk quota", "quota exceeded")


class DiskFull(LlamaHwError):
    """The disk ran out of space while saving; the message names the disk, the path and the bytes needed."""


def mount_point(path: Path) -> Path:
    path = nearest_existing(path.absolute())
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(nearest_existing(path.absolute())).free


def directory_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def is_out_of_space(err: BaseException, path: Path, needed: int) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err).lower()
    if any(word in text for word in NO_SPACE_WORDS):
        return True
    # torch's stream writer loses the reason: judge by the space that is left
    return free_bytes(path) < needed


@contextmanager
def reporting_disk_full(what: str, path: Path, needed: Callable[[], int], after: str) -> Iterator[None]:
    """Turn a full disk while writing `path` into DiskFull; `needed()` estimates the bytes the save takes."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        wanted = needed()
        if not is_out_of_space(err, path, wanted):
            raise
        disk = mount_point(path)
        raise DiskFull(
            f"disk full: {disk} (the disk holding {path}) has {free_bytes(path):,} bytes free; saving {what} "
            f"needs about {wanted:,} bytes; {after}"
        ) from err


def tensor_bytes(tensors) -> int:
    # ZeRO-3 leaves an empty placeholder per parameter and keeps the full size in ds_numel.
    return sum(getattr(t, "ds_numel", t.numel()) * t.element_size() for t in tensors)


def weights_bytes(model) -> int:
    """Bytes of what save_model writes: the adapter for a peft model, every parameter otherwise."""
    parameters = list(model.parameters())
    if hasattr(model, "peft_config"):
        parameters = [p for p in parameters if p.requires_grad]
    return tensor_bytes(parameters)


def optimizer_bytes(optimizer) -> int:
    if optimizer is None:
        return 0
    return tensor_bytes(value for state in optimizer.state.values() for value in state.values()
                        if hasattr(value, "element_size"))
