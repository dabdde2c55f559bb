"""Real launches on 127.0.0.1: two one-process nodes, one two-process node, and an elastic restart.

Each launch trains tests/launch_support.py's tiny DDP model with gloo. DDP averages gradients across
ranks that see different data, so identical final weights on every rank show the group really
trained together; a run that was killed and restarted must end with the weights of an uninterrupted
run, which shows it resumed from its checkpoint rather than starting over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO, subprocess_env
from launch_support import SCRIPT, free_port

pytestmark = pytest.mark.slow
STEPS = 6
TIMEOUT = 180


def launch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llama_hw.launch", "--device", "cpu", *args],
        cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: a hung launch is killed with its workers
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the launcher did not finish within {TIMEOUT} s:\n{output[-3000:]}")
    return process.returncode, output


def results(out_dir, world_size: int) -> tuple[list[dict], list[dict[str, torch.Tensor]]]:
    records = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(world_size)]
    weights = [torch.load(out_dir / f"weights_rank{rank}.pt", weights_only=True) for rank in range(world_size)]
    return records, weights


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def one_node_two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_node")
    # No --master-port: one node takes a free port itself.
    code, output = finish(launch("--nproc-per-node", "2", "--script", str(SCRIPT), "--", str(out),
                                 "--steps", str(STEPS)))
    assert code == 0, output
    return out, output


def test_one_node_two_processes(one_node_two_processes):
    out, output = one_node_two_processes
    assert "node 0 of 1, 2 worker(s) on cpu" in output
    records, weights = results(out, 2)
    assert [r["world_size"] for r in records] == [2, 2]
    assert all(r["restart_count"] == 0 and len(r["losses"]) == STEPS for r in records)
    assert all(r["device"] == "cpu" and r["omp_num_threads"] == "1" for r in records)  # the user's value won
    assert_same_weights(*weights)


def test_two_nodes_one_process_each(tmp_path, one_node_two_processes):
    port = str(free_port())
    common = ["--nodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
              "--script", str(SCRIPT), "--", str(tmp_path), "--steps", str(STEPS)]
    nodes = [launch("--node-rank", str(rank), *common) for rank in (0, 1)]
    outcomes = [finish(node) for node in nodes]
    for code, output in outcomes:
        assert code == 0, output
    records, weights = results(tmp_path, 2)
    assert [r["world_size"] for r in records] == [2, 2]
    assert_same_weights(*weights)
    # The same global computation as one node with two processes.
    _, single_node_weights = results(one_node_two_processes[0], 2)
    assert_same_weights(weights[0], single_node_weights[0])


def test_killed_worker_restarts_and_resumes(tmp_path, one_node_two_processes):
    code, output = finish(launch("--nproc-per-node", "2", "--max-restarts", "1", "--master-port", str(free_port()),
                                 "--script", str(SCRIPT), "--", str(tmp_path), "--steps", str(STEPS),
                                 "--kill-at", "3"))
    assert code == 0, output
    assert "exitcode: -9" in output  # the agent saw the SIGKILL
    records, weights = results(tmp_path, 2)
    assert all(r["restart_count"] == 1 and r["resumed_from_step"] == 3 and r["final_step"] == STEPS for r in records)
    assert all(len(r["losses"]) == STEPS - 3 for r in records)
    assert_same_weights(*weights)
    _, uninterrupted = results(one_node_two_processes[0], 2)
    assert_same_weights(weights[0], uninterrupted[0])


def test_killed_worker_without_restarts_fails_the_launch(tmp_path):
    code, output = finish(launch("--nproc-per-node", "2", "--master-port", str(free_port()),
                                 "--script", str(SCRIPT), "--", str(tmp_path), "--kill-at", "2"))
    assert code == 1
    assert "launch_support.py FAILED" in output and "exitcode  : -9" in output
    assert not (tmp_path / "weights_rank0.pt").exists()
