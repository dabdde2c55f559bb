"""Every config in examples/ is accepted by the real trainer parser and launches (dry run) as its header says."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest
import yaml

from llama_hw.cli import module_main
from llama_hw.train.config import parse_args
from conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
LAUNCH_PREFIX = "#   launch: "


def launch_lines(path: Path) -> list[list[str]]:
    """The launcher command lines of a config's comment header, as argv after `python -m llama_hw.launch`."""
    lines = [line[len(LAUNCH_PREFIX):] for line in path.read_text().splitlines() if line.startswith(LAUNCH_PREFIX)]
    argvs = []
    for line in lines:
        tokens = shlex.split(line)
        assert tokens[:3] == ["python", "-m", "llama_hw.launch"], line
        argvs.append(tokens[3:])
    return argvs


def parsed_values(config) -> dict:
    values = dict(config.training)
    for part in (config.model, config.data, config.finetuning, config.run):
        values.update({f.name: getattr(part, f.name) for f in dataclasses.fields(part)})
    return values


@pytest.fixture(autouse=True)
def clean_launch_env(monkeypatch):
    for name in ("LLAMA_HW_DEVICE", "MASTER_ADDR", "MASTER_PORT", "SLURM_NNODES", "SLURM_NODEID",
                 "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def test_the_recipes_the_docs_promise_are_there():
    names = {path.name for path in EXAMPLES}
    for expected in ("ascend-llama7b-zero1-8npu.yaml", "ascend-llama13b-zero2-2x8npu.yaml",
                     "cuda-llama7b-lora-8gpu.yaml", "cuda-llama7b-full-fsdp-8gpu.yaml",
                     "cuda-llama33b-lora-deepspeed.yaml", "cuda-qlora-llama7b-24gb.yaml",
                     "cls-sentiment.yaml", "alpaca-llama7b-full-4gpu.yaml"):
        assert expected in names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses_with_current_flag_names(path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = parse_args([str(path.relative_to(REPO))])
    # current names only: a translated FastChat flag would print a note at every start
    assert config.notes == []
    values = parsed_values(config)
    for key, value in yaml.safe_load(path.read_text()).items():
        got = values[key]
        if isinstance(got, list) and not isinstance(value, list):
            value = [value]  # a list flag given one value
        if isinstance(value, list):
            assert list(got) == value, key
        elif isinstance(value, bool):
            assert bool(got) is value, key
        else:
            assert type(value)(got) == value, key


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_dry_runs_as_its_header_says(path, monkeypatch, capsys, no_torch_npu):
    monkeypatch.chdir(REPO)
    argvs = launch_lines(path)
    assert argvs, f"{path.name}: no `{LAUNCH_PREFIX.strip()}` line in its header"
    relative = str(path.relative_to(REPO))
    for argv in argvs:
        assert relative in argv
        device = argv[argv.index("--device") + 1]
        assert module_main("llama_hw.launch.recipe", ["--dry-run", *argv]) == 0
        out = capsys.readouterr().out
        assert f"--module llama_hw.train {relative}" in out
        assert f"LLAMA_HW_DEVICE={device}" in out
        if "--nproc-per-node" in argv:
            assert f"--nproc-per-node={argv[argv.index('--nproc-per-node') + 1]}" in out
        if "--node-rank" in argv:
            assert f"--node-rank={argv[argv.index('--node-rank') + 1]}" in out


def test_qlora_example_asks_for_4bit_and_zero_examples_for_their_stage(monkeypatch):
    monkeypatch.chdir(REPO)
    assert parse_args(["examples/cuda-qlora-llama7b-24gb.yaml"]).finetuning.finetuning_type == "qlora"
    assert parse_args(["examples/ascend-llama7b-zero1-8npu.yaml"]).training["deepspeed"] == "zero1"
    assert parse_args(["examples/ascend-llama13b-zero2-2x8npu.yaml"]).training["deepspeed"] == "zero2"
    assert parse_args(["examples/cls-sentiment.yaml"]).model.task == "cls"
