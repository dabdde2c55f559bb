"""The launcher's plan, dry runs, Slurm and hostfile handling, and its errors (no workers started)."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from llama_hw.cli import module_main
from llama_hw.launch import slurm
from llama_hw.launch.plan import LaunchOptions, plan_node
from llama_hw.launch.recipe import parse_options
from llama_hw.utils import distributed
from conftest import REPO, subprocess_env
from launch_support import SCRIPT

RECIPE = "llama_hw.launch.recipe"


@pytest.fixture(autouse=True)
def clean_launch_env(monkeypatch):
    """The tests describe their environment themselves: nothing from the caller's shell or Slurm."""
    # DS_ACCELERATOR too: in-process training tests set it for the whole pytest process.
    for name in ("LLAMA_HW_DEVICE", "DS_ACCELERATOR", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS",
                 "SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def run_launcher(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llama_hw.launch", *args], capture_output=True, text=True, cwd=REPO,
        env=subprocess_env(**env), timeout=120,
    )


def test_dry_run_describes_an_npu_node_on_a_machine_without_npu(no_torch_npu):
    result = run_launcher("--dry-run", "--device", "npu", "--nodes", "2", "--node-rank", "1",
                          "--master-addr", "10.0.0.1", "--", "--model_name_or_path", "m")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--rdzv-endpoint=10.0.0.1:29500",
                     "--rdzv-conf=is_host=0", "--module llama_hw.train --model_name_or_path m",
                     "HCCL_CONNECT_TIMEOUT=1200", "HCCL_EXEC_TIMEOUT=1200", "ASCEND_RT_VISIBLE_DEVICES=0",
                     "DS_ACCELERATOR=npu", "LLAMA_HW_DEVICE=npu", "process group backend hccl"):
        assert expected in out, expected
    assert "NOT available on this machine" in out and "pip install torch-npu" in out


def test_user_variables_win_over_backend_defaults(no_torch_npu):
    options = LaunchOptions(device="npu", dry_run=True, nproc_per_node=8, target_args=["x"])
    plan = plan_node(options, environ={"HCCL_CONNECT_TIMEOUT": "7200", "ASCEND_RT_VISIBLE_DEVICES": "4,5,6,7"})
    assert plan.env["HCCL_EXEC_TIMEOUT"] == "1200"
    assert "HCCL_CONNECT_TIMEOUT" not in plan.env and "ASCEND_RT_VISIBLE_DEVICES" not in plan.env
    assert plan.kept_env == {"HCCL_CONNECT_TIMEOUT": "7200", "ASCEND_RT_VISIBLE_DEVICES": "4,5,6,7"}


def test_dry_run_counts_visible_devices_of_an_unavailable_backend(no_torch_npu):
    plan = plan_node(LaunchOptions(device="npu", dry_run=True), environ={"ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3"})
    assert plan.nproc_per_node == 4


def test_cpu_plan_one_node_defaults():
    plan = plan_node(LaunchOptions(device="cpu", target_args=["--max_steps", "3"]), environ={})
    assert (plan.nodes, plan.node_rank, plan.nproc_per_node) == (1, 0, 1)
    assert plan.env["OMP_NUM_THREADS"].isdigit() and plan.env["LLAMA_HW_DEVICE"] == "cpu"
    args = plan.torchrun_args()
    # One node takes a free port (as torchrun --standalone), so parallel jobs never collide.
    assert "--rdzv-endpoint=127.0.0.1:0" in args and "--rdzv-backend=c10d" in args
    assert args[-4:] == ["--module", "llama_hw.train", "--max_steps", "3"]


def test_restarts_get_a_fresh_store_per_attempt():
    """torch shares the agent's store across restarts and restarted workers then read stale peer addresses."""
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in plan_node(LaunchOptions(device="cpu", target_args=["x"]), {}).env
    plan = plan_node(LaunchOptions(device="cpu", max_restarts=2, target_args=["x"]), environ={})
    assert plan.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and "--max-restarts=2" in plan.torchrun_args()


def test_master_address_and_port_from_the_environment():
    plan = plan_node(LaunchOptions(device="cpu", nodes=2, node_rank=0, target_args=["x"]),
                     environ={"MASTER_ADDR": "head", "MASTER_PORT": "23456"})
    assert "--rdzv-endpoint=head:23456" in plan.torchrun_args()
    assert "--rdzv-conf=is_host=1,join_timeout=600" in plan.torchrun_args()


def test_config_file_goes_first_to_the_trainer(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("max_steps: 3\n")
    options = parse_options([str(config), "--device", "cpu", "--", "--seed", "1"])
    plan = plan_node(options, environ={})
    assert plan.target.module == "llama_hw.train"
    assert plan.target.args == [str(config), "--seed", "1"]


def test_script_target_and_static_rendezvous():
    options = parse_options(["--device", "cpu", "--rdzv-backend", "static", "--script", str(SCRIPT), "--", "out"])
    args = plan_node(options, environ={}).torchrun_args()
    assert args[-2:] == [str(SCRIPT), "out"] and "--module" not in args
    assert "--rdzv-backend=static" in args and not any(a.startswith("--rdzv-endpoint") for a in args)
    assert "--master-port=29500" in args


def test_slurm_job_sets_nodes_rank_master_and_id(monkeypatch):
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)  # our parser, not scontrol
    environ = {"SLURM_NNODES": "3", "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[07-09]", "SLURM_JOB_ID": "4242"}
    plan = plan_node(LaunchOptions(device="cpu", target_args=["x"]), environ=environ)
    assert (plan.nodes, plan.node_rank, plan.master_addr, plan.rdzv_id) == (3, 2, "gpu07", "4242")
    # Flags beat Slurm.
    plan = plan_node(LaunchOptions(device="cpu", nodes=3, node_rank=0, master_addr="ib-gpu07", target_args=["x"]),
                     environ=environ)
    assert (plan.node_rank, plan.master_addr) == (0, "ib-gpu07")


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("n1,n[3-4]", ["n1", "n3", "n4"]),
        ("node-[9-11]", ["node-9", "node-10", "node-11"]),
        ("x[098-101]", ["x098", "x099", "x100", "x101"]),
        ("a[1-2]-ib[0-1]", ["a1-ib0", "a1-ib1", "a2-ib0", "a2-ib1"]),
        ("single", ["single"]),
    ],
)
def test_expand_slurm_nodelist(nodelist, hosts):
    assert slurm.expand_nodelist(nodelist) == hosts


def test_hostfile_dry_run_commands_and_carried_environment(tmp_path, no_torch_npu):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two Ascend servers\nworker-0 slots=8\nworker-1 slots=8\n")
    result = run_launcher(
        "--dry-run", "--device", "npu", "--hostfile", str(hostfile), "--master-port", "29600", "--rdzv-timeout", "900",
        "--", "--model_name_or_path", "/models/llama-7b", "--deepspeed", "zero1",
        HCCL_CONNECT_TIMEOUT="3600", ASCEND_GLOBAL_LOG_LEVEL="3", LLAMA_HW_PATCHES="none", UNRELATED_TOKEN="secret",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    fan_out = next(line for line in lines if line.strip().startswith("pdsh "))
    assert "-w worker-0,worker-1" in fan_out
    node_lines = {line.split(":", 1)[0].strip(): line for line in lines if line.strip().startswith("worker-")
                  and "llama_hw.launch" in line}
    assert set(node_lines) == {"worker-0", "worker-1"}
    for rank, host in enumerate(("worker-0", "worker-1")):
        line = node_lines[host]
        for expected in (f"--node-rank {rank}", "--nodes 2", "--nproc-per-node 8", "--master-addr worker-0",
                         "--master-port 29600", "--rdzv-timeout 900", "--device npu",
                         "-- --model_name_or_path /models/llama-7b", f"cd {REPO};"):
            assert expected in line, (expected, line)
        words = shlex.split(line.split(":", 1)[1])  # every word is shlex-quoted for the remote shell
        exported = dict(word.rstrip(";").split("=", 1) for before, word in zip(words, words[1:]) if before == "export")
        assert exported == {"HCCL_CONNECT_TIMEOUT": "3600", "ASCEND_GLOBAL_LOG_LEVEL": "3", "LLAMA_HW_PATCHES": "none"}
        assert "UNRELATED_TOKEN" not in line
    assert "UNRELATED_TOKEN" not in result.stdout


def test_distributed_helpers_read_torchrun_variables(monkeypatch):
    for name, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "TORCHELASTIC_RESTART_COUNT": "2"}.items():
        monkeypatch.setenv(name, value)
    assert (distributed.rank(), distributed.local_rank(), distributed.world_size()) == (3, 1, 4)
    assert distributed.restart_count() == 2 and distributed.is_launched() and not distributed.is_main_process()
    distributed.end_process_group()  # no process group: nothing to do, no error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "--nodes 0: must be 1 or more"),
        (["--nodes", "2", "--node-rank", "2", "--master-addr", "h"], "--node-rank 2: must be between 0 and 1"),
        (["--nodes", "2", "--node-rank", "1"], "--nodes 2 needs --master-addr"),
        (["--nodes", "2", "--master-addr", "h"], "--nodes 2 needs --node-rank"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--hostfile", "no/such/hostfile"], "--hostfile no/such/hostfile: no such file"),
        (["--script", "no/such/script.py"], "--script no/such/script.py: no such file"),
        (["--nproc-per-node", "0"], "--nproc-per-node 0: must be 1 or more"),
        (["--max-restarts", "-1"], "--max-restarts -1: must be 0 or more"),
        (["--nodes", "two"], "argument --nodes: invalid int value: 'two'"),
        (["missing.yaml"], "config file missing.yaml not found"),
    ],
)
def test_bad_options_give_one_line_and_exit_code_2(args, message, capsys):
    code = module_main(RECIPE, [*args, "--", "x"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ") and message in captured.err
    assert captured.err.strip().count("\n") == 0
    assert "Traceback" not in captured.err


def test_bad_option_from_the_command_line():
    result = run_launcher("--nodes", "0", "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --nodes 0: must be 1 or more"


def test_no_target_is_the_demo_and_a_dry_run_writes_nothing(tmp_path, capsys, monkeypatch):
    from llama_hw import demo

    monkeypatch.chdir(tmp_path)
    assert module_main(RECIPE, ["--dry-run", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"--module llama_hw.train --model_name_or_path '<temporary directory: the random initial model>' " \
           f"--data_path {demo.TRAIN_DATA} --template {demo.DEMO.template}" in out
    assert f"--max_steps {demo.DEMO.max_steps}" in out and f"--output_dir {tmp_path / 'output' / 'demo'}" in out
    assert list(tmp_path.iterdir()) == []
