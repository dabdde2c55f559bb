"""Hugging Face Hub model ids: `--model_name_or_path org/name` becomes a local snapshot folder.

A local directory always wins and is returned as it is. Otherwise an `org/name` id goes through
huggingface_hub's `snapshot_download`, which answers from the local cache when `HF_HUB_OFFLINE=1` and
downloads (or refreshes) otherwise, with the Hub's own cache layout, locking and resumption. Only what
llama_hw loads is fetched: config, tokenizer, adapter files and safetensors weights; a repository without
safetensors gets its pickled `pytorch_model*.bin` shards instead (read later with `weights_only=True`).
Everything downstream then sees a plain local folder, so transformers and peft never reach the network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from llama_hw.errors import UsageError

# What a model folder needs besides its weights (the names save_pretrained and peft write).
SUPPORT_FILES = [
    "config.json",
    "generation_config.json",
    "llama_hw.json",
    "adapter_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
]
SAFETENSORS_WEIGHTS = ["model*.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"]
PICKLE_WEIGHTS = ["pytorch_model*.bin", "pytorch_model.bin.index.json", "adapter_model.bin"]
# The Hub's rule for a namespace and a repository name (huggingface_hub.utils.validate_repo_id), with the
# namespace required: a bare word is far more often a mistyped local folder than a legacy model id.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def looks_like_hub_id(name_or_path: str) -> bool:
    return bool(HUB_ID.match(name_or_path)) and ".." not in name_or_path and not name_or_path.endswith(".git")


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache snapshot_download reads and fills: `cache_dir`, else HF_HUB_CACHE / HF_HOME's hub folder."""
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_model_path(name_or_path: str | os.PathLike, *, flag: str,
                       cache_dir: str | os.PathLike | None = None, weights: bool = True) -> Path:
    """A local folder holding the model `name_or_path` names; `flag` is the option the user typed it in.

    A local directory is returned as it is; an `org/name` Hub id resolves to its snapshot in the
    Hugging Face cache (`cache_dir`, default HF_HUB_CACHE), downloaded first unless HF_HUB_OFFLINE=1.
    `weights=False` fetches config and tokenizer only (for tools that read the shape, like plan).
    Anything else raises UsageError with one line that says what was searched.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"{flag} {text} is a file; give a model directory or a Hugging Face Hub id (org/name)")
    if not looks_like_hub_id(text):
        raise UsageError(f"{flag} {text} does not exist: it is not a directory, nor a Hugging Face Hub id "
                         "(org/name); give a saved model's folder or a Hub id")
    cache = hub_cache_dir(cache_dir)
    if not weights:
        return Path(_download(text, flag, cache, SUPPORT_FILES))
    return Path(_snapshot(text, flag, cache))


def model_reference(name_or_path: str | os.PathLike, resolved: str | os.PathLike) -> str:
    """What a run records as its base model: the Hub id the user gave (which resolves on any machine through
    its own cache, unlike this machine's snapshot path), else the absolute local folder."""
    text = os.fspath(name_or_path)
    if not Path(text).expanduser().exists() and looks_like_hub_id(text):
        return text
    return str(Path(resolved).resolve())


def _snapshot(repo_id: str, flag: str, cache: Path) -> str:
    """The snapshot folder of `repo_id`: safetensors weights when the repository has them, else its .bin."""
    folder = _download(repo_id, flag, cache, SUPPORT_FILES + SAFETENSORS_WEIGHTS)
    if not any(Path(folder).glob("*.safetensors")):
        folder = _download(repo_id, flag, cache, SUPPORT_FILES + PICKLE_WEIGHTS)
    return folder


def _download(repo_id: str, flag: str, cache: Path, patterns: list[str]) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{flag} {repo_id} is not a local directory, and as a Hugging Face Hub id"
    try:
        return snapshot_download(repo_id, cache_dir=str(cache), allow_patterns=patterns)
    except IncompleteSnapshotError as err:
        raise UsageError(
            f"{where} its snapshot in the cache {cache} is incomplete and the Hub cannot be reached"
            f"{_offline_note()}; finish the download with network access (`hf download {repo_id}`)"
        ) from err
    except GatedRepoError as err:
        raise UsageError(
            f"{where} it is a gated model this machine has no access to; accept its terms on "
            f"https://huggingface.co/{repo_id} and log in (`hf auth login` or HF_TOKEN)"
        ) from err
    except RepositoryNotFoundError as err:
        raise UsageError(
            f"{where} it was not found on the Hub (and the cache {cache} has no copy); check the spelling, "
            "or log in (`hf auth login` or HF_TOKEN) if it is private"
        ) from err
    except RevisionNotFoundError as err:  # the default branch was deleted or renamed
        raise UsageError(f"{where} it has no 'main' revision on the Hub; download the revision you want "
                         f"with `hf download {repo_id} --revision REV` and give its folder") from err
    except LocalEntryNotFoundError as err:
        if hub_offline():
            raise UsageError(
                f"{where} it is not in the cache {cache} (searched; HF_HUB_OFFLINE=1, so nothing was "
                f"downloaded); download it once with network access (`hf download {repo_id}`), point "
                "HF_HUB_CACHE at a cache that holds it, or give a model directory"
            ) from err
        cause = err.__cause__
        reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}" if cause else "no answer"
        raise UsageError(
            f"{where} it is not in the cache {cache} (searched), and the Hub could not be reached ({reason}); "
            "check the network (or HF_ENDPOINT), or give a model directory"
        ) from err
    except HfHubHTTPError as err:
        raise UsageError(f"{where} the Hub refused the download ({str(err).splitlines()[0]}); try again later, "
                         "or give a model directory") from err
    except OSError as err:  # the cache itself: read-only, full disk
        raise UsageError(f"{where} it cannot be stored in the cache {cache} ({err.strerror or err}); set "
                         "HF_HUB_CACHE to a writable folder with room for the model") from err


def _offline_note() -> str:
    return " (HF_HUB_OFFLINE=1)" if hub_offline() else ""
