"""The launcher never runs what a value holds, refuses abbreviated flags, and gives up on a missing master
with one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env
from launch_support import SCRIPT, free_port
from llama_hw.cli import module_main
from llama_hw.launch import multinode
from llama_hw.launch.recipe import parse_options

RECIPE = "llama_hw.launch.recipe"
FAKE_PYTHON = """#!{python}
import json, os, sys
print(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                  "env": {{k: v for k, v in os.environ.items() if k.startswith("LLAMA_HW_")}}}}))
"""


@pytest.mark.parametrize("flag", ["--nproc", "--nproc-per", "--master", "--rdzv"])
def test_abbreviated_flags_are_refused(flag, capsys):
    assert module_main(RECIPE, ["--dry-run", "--device", "cpu", flag, "2", "--", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unrecognized arguments: ") and flag in err and err.count("\n") == 1


def test_rdzv_timeout_must_be_positive(capsys):
    assert module_main(RECIPE, ["--dry-run", "--device", "cpu", "--rdzv-timeout", "0", "--", "x"]) == 2
    assert capsys.readouterr().err == "error: --rdzv-timeout 0: must be 1 second or more\n"


def test_hostfile_values_reach_every_node_as_text(tmp_path, monkeypatch):
    """Run each node's line through bash with an interpreter that only reports what it received."""
    witness = tmp_path / "pwned"
    hostile_env = f"$(touch {witness}) `touch {witness}` ; touch {witness}"
    hostile_arg = f"it's $(touch {witness}) and `touch {witness}`"
    bin_dir = tmp_path / "bin $(touch pwned)"  # the interpreter's path and the working folder are quoted too
    bin_dir.mkdir()
    fake_python = bin_dir / "python"
    fake_python.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake_python.chmod(0o755)
    workdir = tmp_path / "work `touch pwned`"
    workdir.mkdir()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=2\nnode-b slots=2\n")
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(multinode.sys, "executable", str(fake_python))

    options = parse_options(["--device", "cpu", "--hostfile", str(hostfile), "--",
                             "--output_dir", hostile_arg, "--run_name", "a b;c"])
    fanout = multinode.plan_fanout(options, environ={"LLAMA_HW_NOTE": hostile_env, "PATH": "/usr/bin:/bin"})
    assert fanout.command[:2] == ["pdsh", "-S"] and fanout.command[-1].count("%n") == 1

    for rank, (host, line) in enumerate(fanout.node_commands):
        result = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        received = json.loads(result.stdout)
        assert received["env"] == {"LLAMA_HW_NOTE": hostile_env}, host
        assert received["cwd"] == str(workdir)
        argv = received["argv"]
        assert argv[:3] == ["-u", "-m", "llama_hw.launch"]
        assert argv[argv.index("--node-rank") + 1] == str(rank)
        assert argv[argv.index("--") + 1:] == ["--output_dir", hostile_arg, "--run_name", "a b;c"]
    assert not witness.exists() and not (workdir / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_a_node_whose_master_never_comes_up_ends_with_one_line(tmp_path):
    port = free_port()  # bound and released: nothing listens there
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "llama_hw.launch", "--device", "cpu", "--nodes", "2", "--node-rank", "1",
         "--master-addr", "127.0.0.1", "--master-port", str(port), "--rdzv-timeout", "3",
         "--script", str(SCRIPT), "--", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: node 0 never answered at "
                                                                       f"127.0.0.1:{port} within --rdzv-timeout 3 s")
    assert "frame #" not in result.stdout + result.stderr
    assert elapsed < 60, elapsed  # torch's own client would wait 60 s per attempt
    assert list(Path(tmp_path).iterdir()) == []  # no worker started


@pytest.mark.slow
def test_node_0_whose_peers_never_come_ends_with_one_line(tmp_path):
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "llama_hw.launch", "--device", "cpu", "--nodes", "2", "--node-rank", "0",
         "--master-addr", "127.0.0.1", "--master-port", str(port), "--rdzv-timeout", "3",
         "--script", str(SCRIPT), "--", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"error: not all 2 nodes joined at 127.0.0.1:{port} within --rdzv-timeout 3 s; start the "
                             "launcher on every node with --nodes 2, its own --node-rank, --master-addr 127.0.0.1 and "
                             f"--master-port {port}\n")
    assert list(Path(tmp_path).iterdir()) == []
