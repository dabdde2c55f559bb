"""The trainer's command line: FastChat's flag sets, config files, presets, FSDP plans, resume rules."""

from __future__ import annotations

import json

import pytest
from train_support import (
    FASTCHAT_DEEPSPEED_S2,
    FASTCHAT_NPU_FLAGS,
    FASTCHAT_QLORA_FLAGS,
    FASTCHAT_README_FLAGS,
)

from llama_hw.errors import UsageError, run_cli
from llama_hw.train import parse_args
from llama_hw.train.checkpointing import (
    CHECKPOINT_MARKER,
    latest_complete_checkpoint,
    mark_complete,
    resolve_resume,
)
from llama_hw.train.deepspeed import PRESETS, load_deepspeed_config, zero_stage
from llama_hw.train.fsdp import fsdp_plan
from llama_hw.train.model import rope_scaling_factor
from llama_hw.train.recipe import main

PATHS = ["--model_name_or_path", "M", "--data_path", "D.json", "--output_dir", "OUT"]


def test_fastchat_readme_flags_parse_unchanged():
    config = parse_args(PATHS + FASTCHAT_README_FLAGS)
    training = config.training
    assert training["eval_strategy"] == "no"  # --evaluation_strategy, renamed in transformers 5
    assert training["warmup_steps"] == pytest.approx(0.03)  # --warmup_ratio folded into warmup_steps
    assert training["bf16"] is True and training["tf32"] is True
    assert training["gradient_accumulation_steps"] == 16 and training["save_total_limit"] == 10
    # transformers 5 renamed it; the old name would warn (FutureWarning) on every run
    assert training["activation_checkpointing"] is True and training["gradient_checkpointing"] is None
    assert config.model.model_max_length == 2048 and config.model.padding_side == "right"
    assert config.data.lazy_preprocess is True
    assert config.finetuning.finetuning_type == "full"
    plan = fsdp_plan(training["fsdp"], training["fsdp_config"], config.run.fsdp_transformer_layer_cls_to_wrap)
    assert plan.reshard_after_forward is True and plan.layer_classes == ["LlamaDecoderLayer"]
    assert any("--evaluation_strategy is now --eval_strategy" in note for note in config.notes)
    assert any("--warmup_ratio 0.03 is now --warmup_steps 0.03" in note for note in config.notes)
    assert any("--gradient_checkpointing is now --activation_checkpointing" in note for note in config.notes)


def test_fastchat_qlora_flags_mean_qlora_with_fastchat_defaults():
    config = parse_args(PATHS + FASTCHAT_QLORA_FLAGS + ["--deepspeed", "zero2"])
    finetuning = config.finetuning
    assert finetuning.finetuning_type == "qlora"
    assert (finetuning.lora_r, finetuning.lora_alpha, finetuning.lora_dropout) == (8, 16, 0.05)
    assert finetuning.lora_target == ["all"] and finetuning.lora_bias == "none"


def test_fastchat_npu_flags_parse_unchanged():
    config = parse_args(PATHS + FASTCHAT_NPU_FLAGS)
    assert config.training["fp16"] is True and config.training["per_device_train_batch_size"] == 8
    assert config.training["eval_strategy"] == "no"


def test_train_lora_flags_imply_lora():
    config = parse_args(PATHS + ["--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj,o_proj"])
    assert config.finetuning.finetuning_type == "lora"
    assert config.finetuning.lora_target == ["q_proj", "v_proj", "o_proj"]
    assert (config.finetuning.lora_alpha, config.finetuning.lora_dropout) == (16, 0.05)


def test_lora_flag_with_full_finetuning_is_refused():
    with pytest.raises(UsageError, match="--lora_r is a LoRA flag but --finetuning_type is full"):
        parse_args(PATHS + ["--finetuning_type", "full", "--lora_r", "4"])


def test_warmup_steps_beat_warmup_ratio_as_in_transformers_4():
    config = parse_args(PATHS + ["--warmup_ratio", "0.1", "--warmup_steps", "5"])
    assert config.training["warmup_steps"] == 5


def test_removed_transformers_4_flags_are_dropped_with_a_note():
    config = parse_args(PATHS + ["--logging_dir", "runs", "--group_by_length", "True", "--no_cuda", "True"])
    assert config.training["train_sampling_strategy"] == "group_by_length"
    assert config.run.device == "cpu"
    assert any(note.startswith("--logging_dir ignored") for note in config.notes)


def test_yaml_config_file_with_command_line_override(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "model_name_or_path: M\ndata_path: D.json\noutput_dir: OUT\nlearning_rate: 2e-5\n"
        "evaluation_strategy: 'no'\nlora_target: [q_proj, v_proj]\nmax_steps: 10\n"
    )
    config = parse_args([str(config_file), "--max_steps", "3"])
    assert config.training["learning_rate"] == pytest.approx(2e-5)  # YAML reads "2e-5" as a string
    assert config.training["max_steps"] == 3
    assert config.training["eval_strategy"] == "no"
    assert config.finetuning.lora_target == ["q_proj", "v_proj"]


def test_json_config_file(tmp_path):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"model_name_or_path": "M", "data_path": "D.json", "output_dir": "OUT",
                                       "task": "cls", "num_labels": 3}))
    config = parse_args([str(config_file)])
    assert config.model.task == "cls" and config.model.num_labels == 3
    assert config.model.padding_side == "left"  # the classification head reads the last token


@pytest.mark.parametrize(
    "argv, message",
    [
        (PATHS + ["--learning_rat", "1e-4"], "unknown flag --learning_rat (did you mean --learning_rate?)"),
        (["--data_path", "D.json", "--output_dir", "OUT"], "--model_name_or_path is required"),
        (["--model_name_or_path", "M", "--data_path", "D.json"], "--output_dir is required"),
        (PATHS + ["--finetuning_type", "prefix"], "invalid choice"),
        (PATHS + ["--warmup_ratio", "2"], "--warmup_ratio must be in [0, 1)"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(argv, message, capsys):
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("preset", PRESETS)
def test_deepspeed_presets_leave_sizes_to_transformers(preset):
    config = load_deepspeed_config(preset)
    assert zero_stage(config) == int(preset[4])
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    assert config["zero_force_ds_cpu_optimizer"] is False
    if zero_stage(config) == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    if preset == "zero3_offload":
        assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_fastchat_deepspeed_config_may_offload_the_trainer_optimizer(tmp_path):
    path = tmp_path / "deepspeed_config_s2.json"
    path.write_text(json.dumps(FASTCHAT_DEEPSPEED_S2))
    config = load_deepspeed_config(str(path))
    assert zero_stage(config) == 2 and config["zero_force_ds_cpu_optimizer"] is False
    with pytest.raises(UsageError, match="no such file"):
        load_deepspeed_config(str(tmp_path / "missing.json"))


def test_fsdp_options():
    assert fsdp_plan(None, None) is None
    plan = fsdp_plan("full_shard auto_wrap offload", None)
    assert plan.cpu_offload and plan.reshard_after_forward
    assert fsdp_plan("shard_grad_op", {"fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}).layer_classes == [
        "LlamaDecoderLayer"
    ]
    assert fsdp_plan("shard_grad_op", None).reshard_after_forward is False
    arguments = fsdp_plan("full_shard auto_wrap", None, ["LlamaDecoderLayer"]).trainer_arguments()
    assert arguments["fsdp"] is True and arguments["fsdp_config"]["version"] == 2
    assert arguments["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    with pytest.raises(UsageError, match="only in FSDP1"):
        fsdp_plan("hybrid_shard", None)


def test_resume_takes_the_latest_complete_checkpoint(tmp_path):
    for step in (10, 20, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    mark_complete(tmp_path / "checkpoint-10", 10, 1)
    mark_complete(tmp_path / "checkpoint-20", 20, 1)  # checkpoint-30 was being written when the run died
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert resolve_resume(None, tmp_path, overwrite=False) == tmp_path / "checkpoint-20"
    assert resolve_resume("auto", tmp_path, overwrite=True) == tmp_path / "checkpoint-20"
    assert resolve_resume(None, tmp_path, overwrite=True) is None
    assert resolve_resume("False", tmp_path, overwrite=False) is None
    assert resolve_resume(str(tmp_path / "checkpoint-10"), tmp_path, overwrite=False) == tmp_path / "checkpoint-10"
    with pytest.raises(UsageError, match=CHECKPOINT_MARKER):
        resolve_resume(str(tmp_path / "checkpoint-30"), tmp_path, overwrite=False)
    with pytest.raises(UsageError, match="does not exist"):
        resolve_resume(str(tmp_path / "checkpoint-40"), tmp_path, overwrite=False)


def test_rope_is_stretched_like_fastchat():
    assert rope_scaling_factor(2048, 512) == 4.0
    assert rope_scaling_factor(1000, 512) == 2.0
    assert rope_scaling_factor(512, 512) is None


@pytest.mark.parametrize("flag", ["--per_device_train", "--max_step", "--learning", "--lora_tar"])
def test_abbreviated_flags_are_refused(flag, capsys):
    """argparse would take a unique prefix for the whole flag; a typo must not set another flag."""
    assert run_cli(main, PATHS + [flag, "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: unknown flag {flag}") and len(err.splitlines()) == 1, err


def test_abbreviated_keys_in_a_config_file_are_refused(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("model_name_or_path: M\ndata_path: D.json\noutput_dir: OUT\nnum_train_epoch: 2\n")
    with pytest.raises(UsageError, match="unknown flag --num_train_epoch "):
        parse_args([str(config_file)])


def test_llama_factory_flag_names_mean_the_same_here(capsys):
    config = parse_args(PATHS + ["--lora_rank", "16", "--cutoff-len", "1024", "--lora_target", "q_proj,v_proj"])
    assert config.finetuning.lora_r == 16 and config.finetuning.finetuning_type == "lora"
    assert config.model.model_max_length == 1024
    assert "--lora_rank (LLaMA-Factory) is --lora_r here" in config.notes
    assert "--cutoff-len (LLaMA-Factory) is --model_max_length here" in config.notes


def test_negative_numbers_parse_as_values():
    config = parse_args(PATHS + ["--weight_decay", "-1e-3", "--adam_epsilon", "-1E-8", "--max_grad_norm", "-0.5"])
    assert config.training["weight_decay"] == pytest.approx(-1e-3)
    assert config.training["adam_epsilon"] == pytest.approx(-1e-8)
    assert config.training["max_grad_norm"] == pytest.approx(-0.5)


def test_gradient_checkpointing_causes_no_deprecation_warning(tmp_path):
    import warnings

    from transformers import TrainingArguments

    config = parse_args(["--model_name_or_path", "M", "--data_path", "D.json", "--output_dir", str(tmp_path),
                         "--gradient_checkpointing", "True", "--gradient_checkpointing_kwargs",
                         '{"use_reentrant": false}', "--use_cpu", "True"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = TrainingArguments(**config.training)
    assert args.activation_checkpointing is True
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}


def test_help_shows_llama_hw_flags_first(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("usage: python -m llama_hw.train [CONFIG.yaml|CONFIG.json] --model_name_or_path")
    sections = [line for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert sections[:5] == ["options:", "llama_hw: model:", "llama_hw: data:",
                            "llama_hw: finetuning (full, LoRA, QLoRA):", "llama_hw: run:"]
    assert sections[5].startswith("transformers TrainingArguments")
    # the first 40 lines already show the flags every run needs
    assert "--model_name_or_path" in "\n".join(lines[:40]) and "--data_path" in "\n".join(lines[:60])


def test_messages_come_from_the_first_process_only(monkeypatch, capsys):
    from llama_hw.train.logs import configure_logging, logger

    monkeypatch.setenv("RANK", "0")
    configure_logging(None, None)
    logger.info("banner line")
    logger.warning("careful")
    assert capsys.readouterr().out == "banner line\nwarning: careful\n"

    configure_logging("warning", None)  # --log_level warning: no banner
    logger.info("banner line")
    assert capsys.readouterr().out == ""

    monkeypatch.setenv("RANK", "3")  # another process: --log_level_replica (default warning)
    configure_logging(None, None)
    logger.info("banner line")
    logger.warning("careful")
    assert capsys.readouterr().out == "warning: careful\n"
    configure_logging(None, "info")
    logger.info("banner line")
    assert capsys.readouterr().out == "banner line\n"
    monkeypatch.setenv("RANK", "0")
    configure_logging(None, None)


def test_lora_setup_causes_no_deprecation_warning(stories260k_dir):
    """peft reads an attribute transformers 5 deprecated; a user's LoRA run must not print that warning."""
    import warnings

    from transformers import AutoConfig, AutoModelForCausalLM

    from llama_hw.train.finetuning import apply_finetuning

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(stories260k_dir))
    config = parse_args(PATHS + ["--finetuning_type", "lora"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        wrapped = apply_finetuning(model, config.finetuning, task="sft", gradient_checkpointing=False)
    assert hasattr(wrapped, "peft_config")


def test_a_damaged_checkpoint_without_an_intact_one_before_it_stops_the_run(tmp_path):
    from llama_hw.train.checkpointing import checkpoint_damage

    for step in (10, 20):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        mark_complete(checkpoint, step, 1)
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text('{"global_step": 1')  # cut short
    (tmp_path / "checkpoint-20" / "optimizer.pt").write_bytes(b"PK\x03\x04 not the whole archive")
    assert checkpoint_damage(tmp_path / "checkpoint-20").startswith("optimizer.pt: unreadable (BadZipFile")
    assert checkpoint_damage(tmp_path / "checkpoint-10").startswith("trainer_state.json: unreadable")
    with pytest.raises(UsageError, match=r"checkpoint-20 is damaged \(optimizer.pt: .*no earlier checkpoint is "
                                         r"whole; pass --resume_from_checkpoint"):
        resolve_resume(None, tmp_path, overwrite=False)
    with pytest.raises(UsageError, match=r"--resume_from_checkpoint \S+checkpoint-10 is damaged"):
        resolve_resume(str(tmp_path / "checkpoint-10"), tmp_path, overwrite=False)
    assert resolve_resume("False", tmp_path, overwrite=False) is None  # starting over stays possible


def test_lora_targets_the_model_has_pass_the_check(stories260k_dir):
    from llama_hw.train.checks import check_lora_targets

    paths = ["--model_name_or_path", str(stories260k_dir), "--data_path", "D.json", "--output_dir", "OUT"]
    check_lora_targets(parse_args(paths + ["--lora_target", "q_proj,v_proj", "model.layers.0.mlp.down_proj"]),
                       stories260k_dir)
    check_lora_targets(parse_args(paths + ["--task", "cls", "--lora_target", "q_proj", "score"]), stories260k_dir)
    with pytest.raises(UsageError, match="--lora_target score: the model has no module of that name"):
        check_lora_targets(parse_args(paths + ["--lora_target", "score"]), stories260k_dir)  # sft has lm_head
