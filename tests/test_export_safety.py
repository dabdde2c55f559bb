"""`export` destroys nothing it did not write, runs no foreign code, and refuses bad paths before any work.

Every refused case compares a hash of every file under the test's folder (hidden ones too) before and after.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from llama_hw.errors import UsageError, run_cli
from llama_hw.export import destination, merge
from llama_hw.export.recipe import main as export_main

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def copy_model(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for file in source.iterdir():
        shutil.copyfile(file, target / file.name)  # writable copies: the shared originals are read-only
    return target


def make_adapter(base: Path, target: Path) -> Path:
    """A LoRA adapter on `base` with non-zero weights, saved by peft (no training needed)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(target))
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory, stories260k_dir) -> tuple[Path, Path]:
    """(base, adapter) outside every test's own folder, read-only by convention."""
    root = tmp_path_factory.mktemp("export_models")
    base = copy_model(stories260k_dir, root / "base")
    return base, make_adapter(base, root / "adapter")


@pytest.fixture
def workspace(tmp_path, models, monkeypatch) -> Path:
    """tmp/ws with its own base and adapter copies, a user folder, a file, and the working folder ws/home/project."""
    base, adapter = models
    ws = tmp_path / "ws"
    shutil.copytree(base, ws / "base")
    shutil.copytree(adapter, ws / "adapter")
    (ws / "user").mkdir()
    (ws / "user" / "notes.txt").write_text("my notes\n")
    (ws / "a_file").write_text("not a folder\n")
    (ws / "home" / "project").mkdir(parents=True)
    (ws / "home" / "project" / "data.json").write_text("[]\n")
    monkeypatch.chdir(ws / "home" / "project")
    return ws


def tree_hashes(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            if path.is_file() else "dir" for path in sorted(root.rglob("*"))}


def export(ws: Path, out: str | Path, *extra: str, adapter: str = "adapter") -> int:
    return run_cli(export_main, ["--base", str(ws / "base"), "--adapter", str(ws / adapter), "--out", str(out), *extra])


def assert_refused(ws: Path, capsys, out: str | Path, fragment: str, *extra: str, adapter: str = "adapter") -> str:
    before = tree_hashes(ws)
    assert export(ws, out, *extra, adapter=adapter) == 2
    # Only the refusal: one line (after transformers' weight-loading bar, when the refusal comes that late).
    err = capsys.readouterr().err.split("\r")[-1].splitlines()
    assert [line for line in err if not line.startswith("Loading weights")] == err[-1:], err
    assert err[-1].startswith("error: ") and fragment in err[-1], err
    assert tree_hashes(ws) == before
    return err[-1]


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        ("{ws}/adapter", "is --adapter itself"),
        ("{ws}/base", "is --base itself"),
        ("{ws}", "contains --adapter"),
        ("{ws}/../", "contains --adapter"),
        (".", "is the working folder itself"),
        ("..", "contains the working folder"),
        ("/", "contains --adapter"),
        ("{ws}/user", "has no llama_hw_export.json, so llama_hw export did not write it"),
        ("{ws}/a_file", "is a file"),
        ("{ws}/a_file/merged", "is a file, so no directory can be made under it"),
    ],
)
def test_overwrite_refuses_what_export_did_not_write(workspace, capsys, out, fragment):
    assert_refused(workspace, capsys, out.format(ws=workspace), fragment, "--overwrite")


def test_without_overwrite_an_existing_folder_is_refused(workspace, capsys):
    (workspace / "empty").mkdir()
    assert_refused(workspace, capsys, workspace / "empty", "already exists")
    assert_refused(workspace, capsys, workspace / "user", "already exists")


def test_a_link_is_refused(workspace, capsys):
    (workspace / "link").symlink_to(workspace / "user")
    assert_refused(workspace, capsys, workspace / "link", "is a symbolic link", "--overwrite")


def test_overwrite_replaces_an_earlier_export_and_nothing_else(workspace, capsys):
    out = workspace / "exports" / "merged"  # missing parents are made
    assert export(workspace, out) == 0
    marker = json.loads((out / "llama_hw_export.json").read_text())
    assert marker["written_by"] == "llama_hw.export" and "model.safetensors" in marker["files"]
    assert set(marker["files"]) == {p.name for p in out.iterdir()}
    first = tree_hashes(out)

    assert export(workspace, out, "--overwrite", "--dtype", "fp16") == 0
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float16}
    assert tree_hashes(out)["model.safetensors"] != first["model.safetensors"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]  # no staging or old copy left beside it

    # A file the user put into the export is theirs: the folder is no longer only an export.
    (out / "README.md").write_text("my model card\n")
    capsys.readouterr()
    assert_refused(workspace, capsys, out, "holds 1 file(s) the earlier export did not write (e.g. README.md)",
                   "--overwrite")


def test_a_failed_export_leaves_the_earlier_one_whole(workspace, capsys, monkeypatch):
    out = workspace / "merged"
    assert export(workspace, out) == 0
    capsys.readouterr()

    def broken_merge(model, adapter):
        raise UsageError("merge failed halfway")

    monkeypatch.setattr(merge, "merge_into", broken_merge)
    assert_refused(workspace, capsys, out, "merge failed halfway", "--overwrite")
    assert_refused(workspace, capsys, workspace / "new" / "deeper" / "merged", "merge failed halfway")
    assert not (workspace / "new").exists()  # parents made for the staging folder are gone again


def test_an_unwritable_location_is_refused_before_the_model_loads(workspace, capsys, monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model loaded although --out cannot be written")

    def read_only(*args, **kwargs):  # what mkdir answers on a read-only mount, also for root
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(merge, "load_base", must_not_load)
    monkeypatch.setattr(destination.tempfile, "mkdtemp", read_only)
    assert_refused(workspace, capsys, workspace / "merged", f"cannot write in {workspace} (Read-only file system)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into folders without write permission")
def test_a_read_only_folder_is_refused(workspace, capsys):
    (workspace / "locked").mkdir()
    (workspace / "locked").chmod(0o555)
    try:
        assert_refused(workspace, capsys, workspace / "locked" / "merged", "Permission denied")
    finally:
        (workspace / "locked").chmod(0o755)


def test_a_base_that_needs_its_own_code_is_refused_without_the_flag(workspace, capsys):
    witness = workspace.parent / "custom_code_ran"
    base = workspace / "base"
    config = json.loads((base / "config.json").read_text())
    config.update(model_type="llama_hw_test_custom",
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (base / "config.json").write_text(json.dumps(config))
    (base / "configuration_custom.py").write_text(f"open({str(witness)!r}, 'w').close()\n")
    (base / "modeling_custom.py").write_text(f"open({str(witness)!r}, 'w').close()\n")
    assert_refused(workspace, capsys, workspace / "merged", "pass --trust_remote_code to run it")
    assert not witness.exists()


def test_adapter_folder_without_weights_is_refused_before_peft(workspace, capsys):
    (workspace / "adapter" / "adapter_model.safetensors").unlink()
    assert_refused(workspace, capsys, workspace / "merged", "has adapter_config.json but no adapter weights")


def test_truncated_base_weights_are_refused(workspace, capsys):
    weights = workspace / "base" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_refused(workspace, capsys, workspace / "merged", f"{weights} is truncated")


def test_malformed_base_config_is_refused(workspace, capsys):
    config = workspace / "base" / "config.json"
    config.write_text(config.read_text()[:-20])
    assert_refused(workspace, capsys, workspace / "merged", f"{config} is not valid JSON")


def test_pickled_base_weights_holding_objects_are_refused(workspace, capsys):
    import argparse

    from safetensors.torch import load_file

    weights = workspace / "base" / "model.safetensors"
    state = load_file(weights)
    weights.unlink()
    torch.save({**state, "args": argparse.Namespace(lr=1)}, workspace / "base" / "pytorch_model.bin")
    err = assert_refused(workspace, capsys, workspace / "merged", "convert it to safetensors once")
    assert "weights_only=False" not in err


def test_adapter_of_another_model_names_export_flags(workspace, capsys):
    config = json.loads((workspace / "base" / "config.json").read_text())
    (workspace / "base" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    err = assert_refused(workspace, capsys, workspace / "merged", "does not match the base model")
    assert "--base" in err and "--model-path" not in err


@pytest.mark.parametrize("flag", ["--over", "--trust"])
def test_abbreviated_flags_are_refused(workspace, capsys, flag):
    assert_refused(workspace, capsys, workspace / "merged", f"unrecognized arguments: {flag}", flag)
