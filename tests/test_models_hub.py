"""Hub model ids resolve through huggingface_hub's cache; tested offline with a hand-built cache snapshot.

No test here reaches the network: `no_network` makes every connection attempt fail in this process, and
the subprocess test runs with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import subprocess_env
from llama_hw.errors import UsageError
from llama_hw.models import resolve_model_source
from llama_hw.models.hub import looks_like_hub_id, model_reference, resolve_model_path
from llama_hw.train.model import check_model_dir

REPO_ID = "llama-hw-test/stories260K"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_hub_cache(cache: Path, repo_id: str, model_dir: Path, commit: str = COMMIT) -> Path:
    """The layout huggingface_hub writes: blobs named by content hash, a snapshot of symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for item in sorted(model_dir.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(item.read_bytes()).hexdigest()
        shutil.copyfile(item, blob)
        (snapshot / item.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def no_network(monkeypatch):
    """Fail any name lookup or connection from this process, so a test cannot reach the Hub by accident."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, no_network):
    """An empty Hugging Face cache in tmp_path, offline (the variables, and the values huggingface_hub read
    from them at import)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_id_resolves_to_its_cached_snapshot(hub_cache, stories260k_dir):
    snapshot = build_hub_cache(hub_cache, REPO_ID, stories260k_dir)
    resolved = resolve_model_path(REPO_ID, flag="--model_name_or_path")
    assert resolved.resolve() == snapshot.resolve()
    assert json.loads((resolved / "config.json").read_text())["hidden_size"] == 64
    assert check_model_dir(REPO_ID).resolve() == snapshot.resolve()  # train's check sees a whole model


def test_explicit_cache_dir_is_searched(tmp_path, hub_cache, stories260k_dir):
    snapshot = build_hub_cache(tmp_path / "elsewhere", REPO_ID, stories260k_dir)
    assert check_model_dir(REPO_ID, cache_dir=str(tmp_path / "elsewhere")).resolve() == snapshot.resolve()


def test_missing_id_offline_says_the_cache_was_searched_and_the_network_is_off(hub_cache):
    with pytest.raises(UsageError) as caught:
        check_model_dir("meta-llama/Llama-2-7b-hf")
    message = str(caught.value)
    assert message.startswith("--model_name_or_path meta-llama/Llama-2-7b-hf is not a local directory")
    assert f"it is not in the cache {hub_cache} (searched; HF_HUB_OFFLINE=1, so nothing was downloaded)" in message
    assert "`hf download meta-llama/Llama-2-7b-hf`" in message and "\n" not in message


def test_missing_id_with_the_hub_unreachable_says_so(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online, but no_network refuses every connection
    with pytest.raises(UsageError) as caught:
        resolve_model_path("meta-llama/Llama-2-7b-hf", flag="--model-path")
    message = str(caught.value)
    assert f"it is not in the cache {hub_cache} (searched), and the Hub could not be reached" in message
    assert "HF_HUB_OFFLINE" not in message


def test_local_directories_win_and_other_paths_are_refused(tmp_path, hub_cache, monkeypatch):
    local = tmp_path / "org" / "name"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # "org/name" is now a local folder: it must not be looked up on the Hub
    assert resolve_model_path("org/name", flag="--model-path") == Path("org/name")
    with pytest.raises(UsageError, match="does not exist: it is not a directory, nor a Hugging Face Hub id"):
        resolve_model_path(str(tmp_path / "missing"), flag="--model-path")
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(UsageError, match="weights.bin is a file"):
        resolve_model_path(str(tmp_path / "weights.bin"), flag="--model-path")


@pytest.mark.parametrize("text, hub", [
    ("meta-llama/Llama-2-7b-hf", True), ("lmsys/vicuna-7b-v1.5", True), ("./models/x", False),
    ("/abs/model", False), ("a/b/c", False), ("gpt2", False), ("~/models", False), ("org/../x", False),
])
def test_what_counts_as_a_hub_id(text, hub):
    assert looks_like_hub_id(text) is hub


def test_chat_and_export_resolve_a_hub_id_and_the_base_an_adapter_records(hub_cache, stories260k_dir, tmp_path):
    snapshot = build_hub_cache(hub_cache, REPO_ID, stories260k_dir)
    assert resolve_model_source(REPO_ID).base.resolve() == snapshot.resolve()
    # An adapter trained on a Hub id records the id (peft's base_model_name_or_path), not a folder.
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": REPO_ID}))
    save_file({"lora_A": torch.zeros(2, 2)}, adapter / "adapter_model.safetensors")
    (adapter / "llama_hw.json").write_text(json.dumps({"template": "raw", "base_model": REPO_ID}))
    source = resolve_model_source(adapter)
    assert source.base.resolve() == snapshot.resolve() and source.adapter == adapter


@pytest.mark.slow  # a subprocess that imports torch
def test_environment_variables_alone_select_the_offline_cache(tmp_path, stories260k_dir):
    """As a user runs it: HF_HUB_CACHE and HF_HUB_OFFLINE=1 in the environment, nothing patched."""
    snapshot = build_hub_cache(tmp_path / "hub", REPO_ID, stories260k_dir)
    code = ("import sys; from llama_hw.models.hub import resolve_model_path as r; "
            "print(r(sys.argv[1], flag='--model-path').resolve())")
    env = subprocess_env(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "home"))
    found = subprocess.run([sys.executable, "-c", code, REPO_ID], env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(snapshot.resolve())


@pytest.mark.slow  # a train subprocess: imports all of transformers and torch
def test_train_names_the_searched_cache_for_a_missing_id(tmp_path):
    (tmp_path / "hub").mkdir()
    env = subprocess_env(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "home"))
    missing = subprocess.run([sys.executable, "-m", "llama_hw.train", "--model_name_or_path", "nobody/nothing",
                              "--data_path", "x.json", "--output_dir", str(tmp_path / "out")],
                             env=env, capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: --model_name_or_path nobody/nothing is not a local directory, and as a Hugging Face Hub id it is "
        f"not in the cache {tmp_path / 'hub'} (searched; HF_HUB_OFFLINE=1, so nothing was downloaded); download it "
        "once with network access (`hf download nobody/nothing`), point HF_HUB_CACHE at a cache that holds it, or "
        "give a model directory"
    ]


def test_chat_answers_from_a_cached_hub_model(hub_cache, stories260k_dir, capsys):
    from chat_support import BASE_CONTINUATION, PROMPT

    from llama_hw.chat.recipe import main as chat_main
    from llama_hw.data import load_tokenizer
    from llama_hw.errors import run_cli

    build_hub_cache(hub_cache, REPO_ID, stories260k_dir)
    assert load_tokenizer(REPO_ID)("Once upon a time").input_ids == load_tokenizer(str(stories260k_dir))(
        "Once upon a time").input_ids
    code = run_cli(chat_main, ["--model-path", REPO_ID, "--template", "raw", "--prompt", PROMPT,
                               "--temperature", "0", "--max-new-tokens", "24", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert BASE_CONTINUATION in out


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, no_network):
    """snapshot_download against a listing of remote files: it writes the files its allow_patterns select
    (huggingface_hub's own filter) into a snapshot folder, and records what was asked for."""
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    def serve(remote_files):
        def snapshot_download(repo_id, *, cache_dir, allow_patterns):
            calls.append(sorted(filter_repo_objects(remote_files, allow_patterns=allow_patterns)))
            folder = Path(cache_dir) / repo_id
            folder.mkdir(parents=True, exist_ok=True)
            for name in calls[-1]:
                (folder / name).write_text("{}")
            return str(folder)

        monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
        return calls

    return serve


def test_downloads_safetensors_and_never_the_pickles_beside_them(fake_hub, tmp_path):
    calls = fake_hub(["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                      "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin",
                      "pytorch_model.bin.index.json", "consolidated.00.pth", "tokenizer.model",
                      "tokenizer_config.json", "README.md", "original/params.json"])
    resolve_model_path("org/model", flag="--model-path", cache_dir=tmp_path)
    assert calls == [["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                      "model.safetensors.index.json", "tokenizer.model", "tokenizer_config.json"]]


def test_a_repository_with_only_pickles_gets_them_in_a_second_request(fake_hub, tmp_path):
    calls = fake_hub(["config.json", "pytorch_model.bin", "tokenizer.json", "training_args.bin"])
    folder = resolve_model_path("org/old-model", flag="--model-path", cache_dir=tmp_path)
    assert calls == [["config.json", "tokenizer.json"], ["config.json", "pytorch_model.bin", "tokenizer.json"]]
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "training_args.bin").exists()


def test_config_only_for_tools_that_read_the_shape(fake_hub, tmp_path):
    calls = fake_hub(["config.json", "model.safetensors", "tokenizer.json"])
    resolve_model_path("org/model", flag="--model", cache_dir=tmp_path, weights=False)
    assert calls == [["config.json", "tokenizer.json"]]


def test_a_run_records_the_hub_id_not_this_machines_snapshot(hub_cache, stories260k_dir, tmp_path, monkeypatch):
    snapshot = build_hub_cache(hub_cache, REPO_ID, stories260k_dir)
    assert model_reference(REPO_ID, resolve_model_path(REPO_ID, flag="--model-path")) == REPO_ID
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    assert model_reference("models/tiny", Path("models/tiny")) == str(tmp_path / "models" / "tiny")
    assert model_reference(str(snapshot), snapshot) == str(snapshot.resolve())


def hub_response(status: int):
    import httpx2  # the HTTP client huggingface_hub's errors carry

    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/org/model"))


def hub_failures():
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        RepositoryNotFoundError,
    )

    return [
        (RepositoryNotFoundError("404 Client Error.", response=hub_response(404)),
         "it was not found on the Hub (and the cache {cache} has no copy); check the spelling, or log in"),
        (GatedRepoError("403 Client Error.", response=hub_response(403)),
         "it is a gated model this machine has no access to; accept its terms on https://huggingface.co/org/model"),
        (IncompleteSnapshotError("2 file(s) are missing", snapshot_path="x"),
         "its snapshot in the cache {cache} is incomplete and the Hub cannot be reached; finish the download"),
        (HfHubHTTPError("503 Server Error: Service Unavailable", response=hub_response(503)),
         "the Hub refused the download (503 Server Error: Service Unavailable); try again later"),
        (OSError(28, "No space left on device"),
         "it cannot be stored in the cache {cache} (No space left on device); set HF_HUB_CACHE to a writable folder"),
    ]


@pytest.mark.parametrize("index", range(5), ids=["not-found", "gated", "incomplete", "server-error", "disk-full"])
def test_each_hub_failure_is_one_line_with_its_fix(index, tmp_path, monkeypatch, no_network):
    failure, says = hub_failures()[index]

    def snapshot_download(*args, **kwargs):
        raise failure

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    with pytest.raises(UsageError) as caught:
        resolve_model_path("org/model", flag="--base", cache_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith("--base org/model is not a local directory, and as a Hugging Face Hub id ")
    assert says.replace("{cache}", str(tmp_path)) in message and "\n" not in message
