"""`python -m llama_hw env` as a user runs it: exit codes, JSON, and the NPU failure paragraphs."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from conftest import FAKES, REPO, subprocess_env

TORCH_RELEASE = torch.__version__.split("+")[0]


def run_env(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = subprocess_env(**env)
    if "LLAMA_HW_DEVICE" not in env:
        clean.pop("LLAMA_HW_DEVICE", None)
    return subprocess.run(
        [sys.executable, "-m", "llama_hw", "env", *args], capture_output=True, text=True, env=clean, cwd=REPO,
        timeout=120,
    )


def test_env_json_reports_cpu_with_a_measured_peak_and_versions(tmp_path):
    result = run_env("--json", LLAMA_HW_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "cpu"
    assert report["selected"]["dist_backend"] == "gloo"
    assert report["selected"]["peak_tflops"]["fp32"] > 0.001
    origin = report["peak_origin"]["fp32"]
    assert origin["tflops"] == report["selected"]["peak_tflops"]["fp32"] and origin["source"] == "probe"
    assert origin["repeats"] == 3 and "measured_at" in origin and "load_1m" in origin
    # measured, then cached only if the machine was quiet
    assert (tmp_path / "cpu_peak_tflops.json").exists() == origin["quiet"]
    versions = report["versions"]
    assert versions["torch"] == torch.__version__
    for name in ("python", "transformers", "peft", "accelerate", "fschat", "torch-npu", "deepspeed", "cann"):
        assert name in versions
    assert [b["name"] for b in report["backends"]] == ["npu", "cuda", "cpu"]


def test_env_table_names_the_backend_and_the_reason():
    result = run_env()
    assert result.returncode == 0, result.stderr
    assert "backend: cpu  (auto-detected; unavailable: npu, cuda)" in result.stdout
    assert "peak TFLOP/s" in result.stdout and "transformers" in result.stdout


def test_env_says_where_the_peak_comes_from():
    result = run_env("--json", LLAMA_HW_PEAK_TFLOPS="fp32=0.5")
    assert json.loads(result.stdout)["peak_origin"]["fp32"] == {"tflops": 0.5, "source": "env"}
    table = run_env(LLAMA_HW_PEAK_TFLOPS="fp32=0.5")
    assert "fp32 0.5 [env]" in " ".join(table.stdout.split())


def test_env_on_npu_without_torch_npu_exits_2_with_the_install_line():
    result = run_env(LLAMA_HW_DEVICE="npu")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --device npu is unavailable: torch_npu is not installed")
    assert f"pip install torch-npu=={TORCH_RELEASE}" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_on_npu_without_cann_says_source_set_env():
    result = run_env("--device", "npu", PYTHONPATH=str(FAKES), FAKE_TORCH_NPU_FAIL="cann")
    assert result.returncode == 2
    assert "libhccl.so: cannot open shared object file" in result.stderr
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_with_the_fake_npu_selects_it():
    result = run_env("--json", PYTHONPATH=str(FAKES), FAKE_NPU_NAME="Ascend910A")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "npu" and report["reason"] == "auto-detected"
    assert report["selected"]["precisions"] == ["fp32", "fp16"]
    assert report["selected"]["peak_tflops"] == {"fp32": None, "fp16": 256.0}
    assert report["selected"]["visible_devices_env"] == "ASCEND_RT_VISIBLE_DEVICES"


def test_torch_npu_breaking_import_torch_is_explained(tmp_path):
    """torch auto-loads torch_npu from its `torch.backends` entry point; a broken one breaks `import torch`."""
    dist_info = tmp_path / "torch_npu-0.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch-npu\nVersion: 0.0\n")
    (dist_info / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n")
    result = run_env(PYTHONPATH=f"{tmp_path}:{FAKES}", FAKE_TORCH_NPU_FAIL="cann")
    assert result.returncode == 2
    assert "Failed to load the backend extension: torch_npu" in result.stderr
    assert "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in result.stderr and "set_env.sh" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_and_device_exit_2():
    result = subprocess.run([sys.executable, "-m", "llama_hw", "frobnicate"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "unknown command 'frobnicate'" in result.stderr
    result = run_env("--device", "tpu")
    assert result.returncode == 2 and "unknown device 'tpu'" in result.stderr


def test_a_bad_flag_is_one_line():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "llama_hw.env", "--jsn"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unrecognized arguments: --jsn (see `llama-hw env --help`)"
