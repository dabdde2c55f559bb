"""`bench run --model org/name` reads a Hub model from the local cache (offline, no network)."""

from __future__ import annotations

import json

from bench_support import bench_cli
from test_models_hub import build_hub_cache


def test_bench_runs_a_cached_hub_model_offline(tmp_path, stories260k_dir, monkeypatch):
    cache = tmp_path / "hub"
    build_hub_cache(cache, "llama-hw-test/stories260K", stories260k_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = bench_cli(["run", "--model", "llama-hw-test/stories260K", "--seq-len", "64", "--micro-batch", "2",
                        "--steps", "2", "--warmup", "1", "--device", "cpu", "--json", "--output",
                        str(tmp_path / "results.jsonl")])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["measured_steps"] == 2 and record["model"]["shape"]["hidden_size"] == 64
