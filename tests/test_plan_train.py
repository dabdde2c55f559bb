"""The planner inside `llama-hw train`: the prediction at start, the refusal before the model loads, the record."""

from __future__ import annotations

import json

import pytest
from train_support import one_thread, small_run  # noqa: F401

from llama_hw.errors import run_cli
from llama_hw.train import recipe
from llama_hw.train.model import load_training_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_far_over_memory_is_refused_before_the_model_loads(tmp_path, stories260k_dir, dummy_conversations,
                                                                  capsys, monkeypatch):  # fmt: skip
    loaded = []
    monkeypatch.setattr("llama_hw.train.session.load_training_model",
                        lambda *a, **k: loaded.append(1) or load_training_model(*a, **k))  # fmt: skip
    out = tmp_path / "out"
    # 50,000 rows of up to 512 positions per step: terabytes of activations on a 24 GiB host
    argv = small_run(stories260k_dir, dummy_conversations, out, "--per_device_train_batch_size", "50000")
    assert run_cli(recipe.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: this run is predicted to need") and "--ignore_plan True" in err, err
    assert "the plan suggests: --per_device_train_batch_size" in err and len(err.splitlines()) == 1
    assert not loaded and not (out / "llama_hw.json").exists()


def test_the_run_records_prediction_and_measured_peak(tmp_path, stories260k_dir, dummy_conversations, capsys):
    out = tmp_path / "out"
    assert run_cli(recipe.main, small_run(stories260k_dir, dummy_conversations, out)) == 0
    assert "plan: predicted peak" in capsys.readouterr().out
    record = json.loads((out / "llama_hw.json").read_text())["memory_plan"]
    assert record["predicted_bytes"]["total"] == sum(v for k, v in record["predicted_bytes"].items()
                                                     if k not in ("total", "host_offload"))  # fmt: skip
    assert record["measured_peak_bytes"] > 0
    # a tiny model on a host: the process's own footprint dominates both sides
    assert 0.5 < record["predicted_over_measured"] < 2.0
