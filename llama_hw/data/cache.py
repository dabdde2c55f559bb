"""On-disk cache of tokenized data sets, so a second run with the same inputs does not re-tokenize.

The key hashes everything that decides the result: the bytes of every data file, the tokenizer
(vocabulary, merges, normalizer, special tokens, chat_template), the template, model_max_length,
--on_bad_record, and the code version (the source of the modules that read, render and tokenize, plus
the fschat / transformers / tokenizers versions). An entry is an Arrow data set written with
`datasets.save_to_disk` (memory-mapped when loaded) and its statistics, written to a temporary directory
and renamed into place; a file lock makes concurrent ranks of one job tokenize once.
Location: $LLAMA_HW_CACHE_DIR/sft, else ~/.cache/llama_hw/sft; delete it to reclaim disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from llama_hw.utils.imports import package_version

CACHE_ENV = "LLAMA_HW_CACHE_DIR"
STATS_FILE = "llama_hw_stats.json"  # written last: its presence marks a complete entry
_CODE_MODULES = ("formats.py", "templates.py", "encode.py", "dataset.py", "tokenizer.py", "stats.py", "encoding.py",
                 "text.py", "corpus.py")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llama_hw") / "sft"


def code_version() -> str:
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _CODE_MODULES:
        digest.update((here / name).read_bytes())
    for package in ("fschat", "transformers", "tokenizers", "datasets"):
        digest.update(f"{package}={package_version(package)}".encode())
    return digest.hexdigest()


def file_digest(path: str, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks (hashlib.file_digest needs Python 3.11; we support 3.10)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(paths: list[str], settings: dict) -> str:
    """sha256 over file contents, `settings` (tokenizer fingerprint, template, lengths, ...) and code."""
    description = {
        "files": [file_digest(path) for path in paths],
        "settings": settings,
        "code": code_version(),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


class DatasetCache:
    def __init__(self, key: str, root: Path | None = None):
        self.root = root or cache_root()
        self.path = self.root / key

    def lock(self):
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock")

    def load(self):
        """(datasets.Dataset, stats dict) or None when there is no complete entry."""
        if not (self.path / STATS_FILE).is_file():
            return None
        from datasets import load_from_disk

        try:
            stats = json.loads((self.path / STATS_FILE).read_text())
            dataset = load_from_disk(str(self.path))
        except (OSError, ValueError, IndexError, KeyError):  # damaged, or left empty by an older version
            dataset = None
        if dataset is None or len(dataset) == 0:
            self.discard()
            return None
        return dataset, stats

    def discard(self) -> None:
        """Remove this entry (a later run tokenizes again instead of failing on it)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def store(self, dataset, stats: dict) -> None:
        staging = Path(tempfile.mkdtemp(prefix=self.path.name + ".", dir=self.root))
        try:
            dataset.save_to_disk(str(staging))
            (staging / STATS_FILE).write_text(json.dumps(stats))
            if self.path.exists():  # an incomplete entry left by a killed run
                shutil.rmtree(self.path)
            os.replace(staging, self.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
