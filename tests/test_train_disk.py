"""A full disk while saving: one line naming the disk, the path and the bytes needed; nothing half-written
is ever taken for a checkpoint or a finished model, and the same command resumes once there is space."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from train_support import file_hashes, one_thread, small_run

from llama_hw.errors import run_cli
from llama_hw.models import METADATA_FILE, read_run_metadata
from llama_hw.train.checkpointing import CHECKPOINT_MARKER, STAGING_DIR
from llama_hw.train.recipe import main

pytestmark = pytest.mark.usefixtures("one_thread")


def no_space(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def disk_full_line(capsys) -> str:
    """The one error line, last on stderr (transformers' progress bars may come before it)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.splitlines()[-1]], err
    line = err.splitlines()[-1]
    assert line.startswith("error: disk full: "), err
    return line


def reported_disk(err: str) -> Path:
    return Path(re.match(r"error: disk full: (\S+) ", err).group(1))


def test_full_disk_while_saving_then_resume_once_there_is_space(tmp_path, stories260k_dir, dummy_conversations,
                                                                monkeypatch, capsys):
    out = tmp_path / "out"
    argv = small_run(stories260k_dir, dummy_conversations, out, "--max_steps", "4", "--save_strategy", "steps",
                     "--save_steps", "2")

    # 1. The disk fills up while checkpoint-4 is written (its optimizer state, half written).
    real_save = torch.save

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        if str(f).endswith(f"checkpoint-4{os.sep}optimizer.pt"):
            Path(f).write_bytes(b"\0" * 100)
            raise no_space(f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    assert run_cli(main, argv) == 2
    err = disk_full_line(capsys)
    disk = reported_disk(err)
    assert os.path.ismount(disk) and out.is_relative_to(disk)
    assert f"the disk holding {out / 'checkpoint-4'}" in err and "saving checkpoint-4 needs about " in err
    assert re.search(r"needs about [1-9][\d,]* bytes", err)
    assert "checkpoint-4 stays incomplete and is ignored on resume" in err
    assert (out / "checkpoint-2" / CHECKPOINT_MARKER).is_file()
    assert not (out / "checkpoint-4" / CHECKPOINT_MARKER).exists()
    assert not any((out / name).exists() for name in (METADATA_FILE, "model.safetensors"))
    checkpoint_2 = file_hashes(out / "checkpoint-2")
    monkeypatch.setattr(torch, "save", real_save)

    # 2. Space again, but the disk fills up while the final model is written.
    import transformers.modeling_utils

    real_safe_save = transformers.modeling_utils.safe_save_file

    def final_save_on_a_full_disk(tensors, filename, *args, **kwargs):
        if STAGING_DIR in str(filename):
            Path(filename).write_bytes(b"\0" * 100)
            raise no_space(filename)
        return real_safe_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", final_save_on_a_full_disk)
    assert run_cli(main, argv) == 2
    err = disk_full_line(capsys)
    assert "saving the final model needs about " in err and f"nothing in {out} was replaced" in err
    assert f"the disk holding {out / STAGING_DIR}" in err
    assert file_hashes(out / "checkpoint-2") == checkpoint_2
    assert (out / "checkpoint-4" / CHECKPOINT_MARKER).is_file()  # written again, completely, after the resume
    assert not any((out / name).exists() for name in (METADATA_FILE, "model.safetensors"))
    checkpoint_4 = file_hashes(out / "checkpoint-4")
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", real_safe_save)

    # 3. The same command once more: it resumes from checkpoint-4, trains nothing more and publishes.
    assert run_cli(main, argv) == 0
    assert f"resuming from {out / 'checkpoint-4'}" in capsys.readouterr().out
    assert file_hashes(out / "checkpoint-2") == checkpoint_2 and file_hashes(out / "checkpoint-4") == checkpoint_4
    assert read_run_metadata(out)["global_step"] == 4
    assert file_hashes(out)["model.safetensors"] == checkpoint_4["model.safetensors"]
    assert not (out / STAGING_DIR).exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 1200 KiB file system (tmpfs): the tiny model's weights fit, a checkpoint with its optimizer does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_real_full_disk_is_one_line(small_disk, stories260k_dir, dummy_conversations, capsys):
    """torch.save says `unexpected pos` or `iostream error` on a full disk; the user reads which disk is full."""
    out = small_disk / "out"
    argv = small_run(stories260k_dir, dummy_conversations, out, "--max_steps", "2", "--save_strategy", "steps",
                     "--save_steps", "1")
    assert run_cli(main, argv) == 2
    err = disk_full_line(capsys)
    assert err.startswith(f"error: disk full: {small_disk} (the disk holding {out / 'checkpoint-1'}) has ")
    needed = int(re.search(r"needs about ([\d,]+) bytes", err).group(1).replace(",", ""))
    assert needed > 1200 * 1024  # more than the whole disk: the weights alone are ~1 MB, Adam's states twice that
    assert not (out / "checkpoint-1" / CHECKPOINT_MARKER).exists()
    assert not (out / METADATA_FILE).exists()
