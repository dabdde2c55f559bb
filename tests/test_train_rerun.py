"""Running a training command again: a finished run is left alone, a stopped one resumes, never past
--max_steps, and a damaged checkpoint is passed over for the one before it."""

from __future__ import annotations

import json

import pytest
from train_support import CrashAtStep, file_hashes, logged_losses, one_thread, small_run

from llama_hw.errors import run_cli
from llama_hw.models import METADATA_FILE, read_run_metadata
from llama_hw.train import build_session, parse_args
from llama_hw.train.checkpointing import CHECKPOINT_MARKER
from llama_hw.train.recipe import main

pytestmark = pytest.mark.usefixtures("one_thread")


def checkpointed(model_dir, data, out, *extra):
    return small_run(model_dir, data, out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, stories260k_dir, dummy_conversations):
    out = tmp_path_factory.mktemp("finished") / "out"
    assert run_cli(main, checkpointed(stories260k_dir, dummy_conversations, out)) == 0
    return out


def test_the_finished_run_records_what_decides_its_result(finished, stories260k_dir, dummy_conversations):
    recorded = read_run_metadata(finished)["training_config"]
    assert recorded["model_name_or_path"] == str(stories260k_dir.resolve())
    assert recorded["data_path"] == str(dummy_conversations.resolve())
    assert (recorded["max_steps"], recorded["learning_rate"], recorded["model_max_length"]) == (4, 1e-3, 512)
    assert recorded["finetuning_type"] == "full" and recorded["per_device_train_batch_size"] == 4
    assert "logging_steps" not in recorded and "save_steps" not in recorded  # they do not change the model


def test_the_same_command_again_changes_no_file(finished, stories260k_dir, dummy_conversations, capsys):
    before = file_hashes(finished)
    capsys.readouterr()
    # logging and saving flags do not change what is trained: still the same run
    assert run_cli(main, checkpointed(stories260k_dir, dummy_conversations, finished, "--logging_steps", "2")) == 0
    printed = capsys.readouterr().out
    assert f"{finished} already holds this run's trained model at step 4" in printed
    assert file_hashes(finished) == before


def test_other_flags_on_a_finished_run_are_refused(finished, stories260k_dir, dummy_conversations, capsys):
    before = file_hashes(finished)
    argv = checkpointed(stories260k_dir, dummy_conversations, finished, "--max_steps", "2", "--model_max_length", "128")
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --output_dir {finished} already holds a trained model")
    assert "--max_steps 2 (the finished run: 4)" in err and "--model_max_length 128 (the finished run: 512)" in err
    assert "--overwrite_output_dir True" in err and "another --output_dir" in err
    assert file_hashes(finished) == before


def test_resuming_from_the_last_step_trains_no_further(finished, tmp_path, stories260k_dir, dummy_conversations,
                                                        capsys):
    """A run stopped while saving its final model: checkpoint-4 of --max_steps 4 complete, no llama_hw.json."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / METADATA_FILE).unlink()
    model_before = file_hashes(out)["model.safetensors"]
    capsys.readouterr()
    assert run_cli(main, checkpointed(stories260k_dir, dummy_conversations, out)) == 0
    assert f"resuming from {out / 'checkpoint-4'}" in capsys.readouterr().out
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert read_run_metadata(out)["global_step"] == 4
    assert file_hashes(out)["model.safetensors"] == model_before  # the weights of step 4, published again


def test_a_damaged_checkpoint_is_passed_over_for_the_one_before(tmp_path, stories260k_dir, dummy_conversations,
                                                                 capsys):
    out = tmp_path / "out"
    argv = small_run(stories260k_dir, dummy_conversations, out, "--max_steps", "6", "--save_strategy", "steps",
                     "--save_steps", "2")
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_session(parse_args(argv), callbacks=[CrashAtStep(5)]).run()
    weights = out / "checkpoint-4" / "model.safetensors"
    assert (out / "checkpoint-4" / CHECKPOINT_MARKER).is_file()
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    kept = file_hashes(out / "checkpoint-2")

    capsys.readouterr()
    assert run_cli(main, argv) == 0
    printed = capsys.readouterr().out
    assert (f"warning: {out / 'checkpoint-4'} is damaged (model.safetensors: truncated" in printed
            and f"resuming from {out / 'checkpoint-2'} instead" in printed), printed
    assert f"output: {out}; resuming from {out / 'checkpoint-2'}" in printed
    assert read_run_metadata(out)["global_step"] == 6
    assert len(logged_losses(out)) == 6
    assert file_hashes(out / "checkpoint-2") == kept
