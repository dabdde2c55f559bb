"""Continued pre-training of stories260K on real text through `llama_hw.train`: loss falls, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
from data_support import write_jsonl
from train_support import logged_losses, one_thread, small_run  # noqa: F401 - fixture
from transformers import TrainerCallback

from llama_hw.errors import run_cli
from llama_hw.models import read_run_metadata
from llama_hw.train import build_session, parse_args
from llama_hw.train.recipe import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_dir):
    """Real English text, one document per record: the alpaca demo's answers."""
    records = json.loads((shared_dir / "data" / "alpaca" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    path = tmp_path_factory.mktemp("corpus") / "answers.jsonl"
    return write_jsonl(path, [{"text": r["output"]} for r in records[:160] if r["output"].strip()])


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_HW_CACHE_DIR", str(tmp_path / "cache"))


def mean(values):
    return sum(values) / len(values)


def test_continued_pretraining_on_text_lowers_the_loss(tmp_path, stories260k_dir, corpus, capsys):
    out = tmp_path / "out"
    argv = small_run(stories260k_dir, corpus, out, "--max_steps", "40", "--model_max_length", "128",
                     "--text_cut", "chunk", "--packing", "True", "--learning_rate", "3e-3")
    assert run_cli(main, argv) == 0
    banner = capsys.readouterr().out
    assert "corpus tokens" in banner and "rows of 128 tokens, documents kept apart" in banner
    losses = logged_losses(out)
    assert len(losses) == 40
    assert mean(losses[-5:]) < 0.8 * mean(losses[:5])
    assert (out / "model.safetensors").is_file()
    assert read_run_metadata(out)["template"] == "raw"  # what chat uses on it: a base model, no chat format


class CrashAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class RecordWindows(TrainerCallback):
    """The window data set's epoch at every step: proves epochs advance as the Trainer's do."""

    def __init__(self, dataset):
        self.dataset, self.epochs = dataset, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.epochs.append(self.dataset.epoch)


@pytest.mark.slow  # three short training runs
def test_window_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, stories260k_dir, corpus, monkeypatch):
    """Two epochs of one window per document; the crash falls in epoch 1, after the checkpoint of step 15."""

    def argv(out):
        return small_run(stories260k_dir, corpus, out, "--num_train_epochs", "2", "--model_max_length", "64",
                         "--text_cut", "window", "--per_device_train_batch_size", "16", "--save_strategy", "steps",
                         "--save_steps", "5", "--seed", "3")

    uninterrupted, crashed = tmp_path / "uninterrupted", tmp_path / "crashed"
    session = build_session(parse_args(argv(uninterrupted)))
    steps_per_epoch = -(-len(session.data.train_dataset) // 16)
    assert steps_per_epoch == 10
    recorder = RecordWindows(session.data.train_dataset)
    session.trainer.add_callback(recorder)
    session.run()
    assert recorder.epochs == [0] * 10 + [1] * 10
    assert session.data.train_dataset.seed == 3

    with pytest.raises(RuntimeError, match="simulated crash"):
        build_session(parse_args(argv(crashed)), callbacks=[CrashAtStep(17)]).run()
    assert run_cli(main, argv(crashed)) == 0  # resumes from checkpoint-15, half-way through epoch 1
    assert logged_losses(crashed) == logged_losses(uninterrupted)
    from safetensors.torch import load_file

    first, second = load_file(uninterrupted / "model.safetensors"), load_file(crashed / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)


def window_run(stories260k_dir, corpus, out, *extra: str) -> list[str]:
    """Two epochs over the first 16 documents: four steps of a global batch of 4 per epoch."""
    return small_run(stories260k_dir, corpus, out, "--num_train_epochs", "2", "--model_max_length", "64",
                     "--text_cut", "window", "--seed", "5", *extra)


@pytest.fixture(scope="module")
def small_corpus(corpus, tmp_path_factory):
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:16]
    path = tmp_path_factory.mktemp("small") / "sixteen.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.mark.slow  # torchrun with two processes
@pytest.mark.parametrize("flags", [[], ["--deepspeed", "zero3"]], ids=["ddp", "zero3"])
def test_two_ranks_train_on_the_windows_of_one_process(flags, tmp_path, stories260k_dir, small_corpus):
    """Each rank draws its share of the same windows, in epoch 1 too: the losses equal one process's."""
    from train_support import torchrun_train

    single, double = tmp_path / "single", tmp_path / "double"
    assert run_cli(main, window_run(stories260k_dir, small_corpus, single)) == 0
    result = torchrun_train(2, window_run(stories260k_dir, small_corpus, double,
                                          "--per_device_train_batch_size", "2", *flags))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    assert len(logged_losses(single)) == 8
    assert logged_losses(double) == pytest.approx(logged_losses(single), rel=1e-5)
