"""Tokenizing a text corpus into llama_hw's Arrow cache: throughput and peak memory as the corpus grows.

    python benchmarks/text_corpus_scale.py --sizes 10,100,1000 [--workers 1] [--tokenizer DIR] [--json]

For each size (MB) it writes a JSON Lines corpus of real public text (the answers of ../shared's alpaca
demos, English and Chinese, repeated until the size is reached: the text repeats, which the tokenizer
does not notice), then tokenizes it into an empty cache in a fresh process, exactly as `--data_format
text` training does (`llama_hw.data.corpus.load_corpus`: datasets.Dataset.from_generator, batches
written to Arrow, save into the cache). It reports wall time, tokens/s, and peak resident memory: of the
tokenizing process (its own ru_maxrss) and of its whole process tree (sampled every 0.1 s, workers
included), and the tree's peak private memory (resident minus file-backed pages: the memory-mapped
Arrow files being written and copied count in RSS, but the kernel can drop them). Memory should stay
flat and time grow linearly with the corpus. The machine, its load average before and after, and the
library versions are printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MB = 1 << 20


def source_texts(shared: Path) -> list[str]:
    texts = []
    for name in ("alpaca_en_demo.json", "alpaca_zh_demo.json"):
        records = json.loads((shared / "data" / "alpaca" / name).read_text(encoding="utf-8"))
        texts += [r["output"] for r in records if r["output"].strip()]
    return texts


def write_corpus(path: Path, texts: list[str], size_mb: int) -> int:
    """A JSONL corpus of about size_mb MB, the texts repeated in order; returns the documents written."""
    lines = [(json.dumps({"text": text}, ensure_ascii=False) + "\n").encode() for text in texts]
    target, written, documents = size_mb * MB, 0, 0
    with open(path, "wb") as handle:
        while written < target:
            line = lines[documents % len(lines)]
            handle.write(line)
            written += len(line)
            documents += 1
    return documents


def child(corpus: str, tokenizer_dir: str, workers: int) -> None:
    """Tokenize into an empty cache (LLAMA_HW_CACHE_DIR is set by the parent) and print the result."""
    import datasets  # noqa: F401 - imported before the clock starts, as a training run has it loaded
    from llama_hw.data.corpus import load_corpus
    from llama_hw.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    _dataset, counts = load_corpus(corpus, [corpus], tokenizer, per_line=False, on_bad_record="error",
                                   num_proc=workers)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "documents": counts.documents, "tokens": counts.tokens, "seconds": seconds,
        "rss_after_tokenizer_load": rss_before,
        "peak_rss_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_rss_largest_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }))


def measure(corpus: Path, tokenizer_dir: str, workers: int, cache_dir: Path) -> dict:
    import psutil

    env = {**os.environ, "LLAMA_HW_CACHE_DIR": str(cache_dir), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, __file__, "--child", str(corpus), "--tokenizer", tokenizer_dir,
               "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watched, peak_tree, peak_private = psutil.Process(process.pid), 0, 0
    while process.poll() is None:
        try:
            memory = [p.memory_info() for p in [watched, *watched.children(recursive=True)] if p.is_running()]
            peak_tree = max(peak_tree, sum(m.rss for m in memory))
            # resident minus file-backed pages: what the process allocated itself (the memory-mapped cache
            # files it reads count in RSS too, but the kernel drops those pages under pressure)
            peak_private = max(peak_private, sum(m.rss - m.shared for m in memory))
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"tokenizing {corpus} failed:\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_tree_sampled"] = peak_tree
    result["peak_private_tree_sampled"] = peak_private
    cache_bytes = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
    result["cache_bytes"] = cache_bytes
    return result


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in ("datasets", "tokenizers", "transformers", "pyarrow"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100", help="corpus sizes in MB, comma-separated")
    parser.add_argument("--workers", default="1", help="--preprocessing_num_workers values, comma-separated")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: ../shared's LLaMA-2)")
    parser.add_argument("--workdir", default=None, help="where corpora and caches go (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="one JSON object per measurement")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from llama_hw.utils.shared import shared_root

    shared = shared_root()
    if shared is None:
        raise SystemExit("error: ../shared not found: set LLAMA_HW_SHARED to the shared test data")
    tokenizer_dir = args.tokenizer or str(shared / "data" / "tokenizers" / "llama2")
    if args.child:
        child(args.child, tokenizer_dir, int(args.workers))
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="llama_hw_text_bench."))
    workdir.mkdir(parents=True, exist_ok=True)
    texts = source_texts(shared)
    print(f"machine: {machine()}; {versions()}")
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
    print("corpus: the alpaca_en_demo + alpaca_zh_demo answers (../shared), repeated to the size; tokenizer "
          f"{tokenizer_dir}")
    print("| corpus | documents | tokens | workers | seconds | tokens/s | peak RSS (process) | peak RSS (tree) "
          "| peak private (tree) | cache |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        corpus = workdir / f"corpus_{size}mb.jsonl"
        documents = write_corpus(corpus, texts, size)
        for workers in (int(w) for w in args.workers.split(",")):
            cache = workdir / f"cache_{size}_{workers}"
            shutil.rmtree(cache, ignore_errors=True)
            result = measure(corpus, tokenizer_dir, workers, cache)
            shutil.rmtree(cache, ignore_errors=True)
            result.update(size_mb=size, workers=workers, loadavg=Path("/proc/loadavg").read_text().split()[:3])
            assert result["documents"] == documents
            if args.json:
                print(json.dumps(result))
            print(f"| {size} MB | {documents:,} | {result['tokens']:,} | {workers} | {result['seconds']:.1f} | "
                  f"{result['tokens'] / result['seconds']:,.0f} | {result['peak_rss_process'] / MB:,.0f} MB | "
                  f"{result['peak_rss_tree_sampled'] / MB:,.0f} MB | {result['peak_private_tree_sampled'] / MB:,.0f} MB "
                  f"| {result['cache_bytes'] / MB:,.0f} MB |",
                  flush=True)
        corpus.unlink()
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
