"""Device backends: the CPU one for real, CUDA and NPU through test doubles of torch.cuda / torch_npu."""

from __future__ import annotations

import json

import pytest
import torch

from llama_hw import backends
from llama_hw.backends import select_backend
from llama_hw.backends.cpu import CpuBackend, cpu_flags
from llama_hw.backends.cuda import CudaBackend
from llama_hw.backends.npu import NpuBackend
from llama_hw.errors import DeviceUnavailable, UsageError

TORCH_RELEASE = torch.__version__.split("+")[0]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("LLAMA_HW_DEVICE", "LLAMA_HW_PEAK_TFLOPS", "ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLAMA_HW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA build of torch with GPUs, as torch.cuda reports them; configure name / capability / count."""
    gpu = {"name": "NVIDIA H100 80GB HBM3", "capability": (9, 0), "count": 8}
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpu["count"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu["count"] > 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: gpu["name"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: gpu["capability"])
    return gpu


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)


# -- CPU, for real -----------------------------------------------------------------------------


def test_cpu_backend_facts():
    cpu = CpuBackend()
    assert cpu.availability().available
    assert cpu.device() == torch.device("cpu") and cpu.bind(3) == torch.device("cpu")
    assert cpu.dist_backend == "gloo" and cpu.deepspeed_accelerator == "cpu"
    assert cpu.visible_devices_env is None
    assert cpu.trainer_arguments(world_size=2) == {"use_cpu": True, "ddp_backend": "gloo"}
    assert cpu.trainer_arguments(world_size=1) == {"use_cpu": True}
    native_bf16 = bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})
    assert cpu.supported_precisions() == (("fp32", "bf16") if native_bf16 else ("fp32",))
    assert cpu.default_precision() == "fp32"
    with pytest.raises(UsageError, match="fp16 is not supported on .* supported: fp32"):
        cpu.check_precision("fp16")


def test_cpu_launcher_env_splits_threads(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    env = CpuBackend().launcher_env(nproc_per_node=4)
    assert env == {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "4"}
    assert CpuBackend().launcher_env(nproc_per_node=32)["OMP_NUM_THREADS"] == "1"


def test_cpu_memory_stats_track_a_large_allocation():
    cpu = CpuBackend()
    cpu.reset_peak_memory()
    before = cpu.memory_stats()
    block = torch.ones(64 * 1024 * 1024, dtype=torch.uint8)  # 64 MiB, touched
    after = cpu.memory_stats()
    assert after.peak_allocated_bytes >= before.allocated_bytes + 60 * 1024 * 1024
    assert after.peak_allocated_bytes >= after.allocated_bytes > 0
    del block


@pytest.fixture
def fake_probe(monkeypatch):
    """The GEMM probe and the load average, as a test sets them: no timing in tests."""
    from llama_hw.backends import cpu

    machine = {"tflops": 0.36, "load": 0.1, "probes": 0}

    def measure(dtype, repeats=1, **_):
        machine["probes"] += 1
        return machine["tflops"]

    monkeypatch.setattr(cpu, "measure_gemm_tflops", measure)
    monkeypatch.setattr(cpu, "load_average", lambda: machine["load"])
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # quiet below a load of 0.5
    monkeypatch.setattr(cpu, "_MEASURED", {})  # a fresh process
    return machine


def new_process(monkeypatch):
    from llama_hw.backends import cpu

    monkeypatch.setattr(cpu, "_MEASURED", {})


def test_cpu_peak_probed_quiet_is_cached_with_its_date_and_load(tmp_path, fake_probe, monkeypatch):
    cpu = CpuBackend()
    origin = cpu.peak_origin("fp32")
    assert (origin.tflops, origin.source, origin.load_1m, origin.quiet, origin.repeats) == (0.36, "probe", 0.1, True, 3)
    assert cpu.peak_tflops("fp32") == 0.36 and fake_probe["probes"] == 1  # one probe per process
    cache = tmp_path / "cache" / "cpu_peak_tflops.json"
    (key,) = json.loads(cache.read_text())
    assert key.endswith("|fp32") and f"threads={torch.get_num_threads()}" in key
    new_process(monkeypatch)
    again = CpuBackend().peak_origin("fp32")
    assert (again.source, again.tflops, again.measured_at) == ("cache", 0.36, origin.measured_at)
    assert fake_probe["probes"] == 1  # read back, not re-measured
    assert cpu.peak_tflops("fp16") is None  # not a CPU training precision


def test_a_probe_under_load_is_used_but_never_cached(tmp_path, fake_probe, monkeypatch):
    fake_probe.update(tflops=0.045, load=3.2)
    origin = CpuBackend().peak_origin("fp32")
    assert (origin.tflops, origin.source, origin.quiet) == (0.045, "probe", False)
    assert "not cached: the machine was busy" in origin.note
    assert not (tmp_path / "cache" / "cpu_peak_tflops.json").exists()
    new_process(monkeypatch)
    fake_probe.update(tflops=0.36, load=0.2)  # the next process, on a quiet machine, probes and caches
    assert CpuBackend().peak_origin("fp32").source == "probe"
    assert json.loads((tmp_path / "cache" / "cpu_peak_tflops.json").read_text()).popitem()[1]["tflops"] == 0.36


def test_a_poisoned_cache_is_replaced_by_a_probe_that_beats_it(tmp_path, fake_probe, monkeypatch):
    from llama_hw.backends.cpu import cpu_model_name

    key = f"{cpu_model_name()}|threads={torch.get_num_threads()}|torch={torch.__version__}|fp32"
    cache = tmp_path / "cache" / "cpu_peak_tflops.json"
    cache.parent.mkdir()
    cache.write_text(json.dumps({key: 0.045}))  # an older llama_hw's entry: a bare number, load unknown
    fake_probe.update(tflops=0.30, load=1.5)  # still busy, but faster than the cache: the cache was slowed down
    assert CpuBackend().peak_origin("fp32").tflops == 0.30
    assert json.loads(cache.read_text())[key]["tflops"] == 0.30
    new_process(monkeypatch)
    fake_probe.update(tflops=0.36, load=0.1)
    assert CpuBackend().peak_origin("fp32").tflops == 0.36  # not quiet before: probed again, and cached
    new_process(monkeypatch)
    fake_probe.update(tflops=0.10, load=0.1)
    origin = CpuBackend().peak_origin("fp32")  # a quiet cache stands: no probe
    assert (origin.source, origin.tflops, fake_probe["probes"]) == ("cache", 0.36, 2)
    reprobed = CpuBackend().measured_peak("fp32", reprobe=True)  # `env --probe`: slower now, the cache is kept
    assert (reprobed.source, reprobed.tflops) == ("cache", 0.36) and "a probe now gave only 0.1" in reprobed.note


def test_peak_origin_names_the_environment_override(monkeypatch, fake_probe):
    monkeypatch.setenv("LLAMA_HW_PEAK_TFLOPS", "fp32=0.5")
    assert CpuBackend().peak_origin("fp32").as_dict() == {"tflops": 0.5, "source": "env"}
    assert fake_probe["probes"] == 0


def test_peak_tflops_environment_override(monkeypatch):
    monkeypatch.setenv("LLAMA_HW_PEAK_TFLOPS", "42.5")
    assert CpuBackend().peak_tflops("fp32") == 42.5
    monkeypatch.setenv("LLAMA_HW_PEAK_TFLOPS", "bf16=400,fp16=380")
    assert CpuBackend().peak_tflops("fp16") == 380.0
    monkeypatch.setenv("LLAMA_HW_PEAK_TFLOPS", "fast")
    with pytest.raises(UsageError, match="LLAMA_HW_PEAK_TFLOPS='fast' is not a number"):
        CpuBackend().peak_tflops("fp32")


def test_cpu_trainer_arguments_build_a_cpu_trainer(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], **CpuBackend().trainer_arguments())
    assert args.device == torch.device("cpu") and args.use_cpu
    assert args.parallel_mode.name == "NOT_PARALLEL"


# -- selection ---------------------------------------------------------------------------------


def test_auto_detection_falls_back_to_cpu(no_torch_npu, no_cuda):
    selection = select_backend()
    assert selection.backend.name == "cpu"
    assert selection.reason == "auto-detected; unavailable: npu, cuda"


def test_auto_detection_prefers_npu_then_cuda(fake_torch_npu, fake_cuda):
    assert select_backend().backend.name == "npu"
    assert select_backend("auto").backend.name == "npu"


def test_auto_detection_takes_cuda_without_npu(no_torch_npu, fake_cuda):
    assert select_backend().backend.name == "cuda"


def test_environment_beats_auto_and_flag_beats_environment(fake_torch_npu, fake_cuda, monkeypatch):
    monkeypatch.setenv("LLAMA_HW_DEVICE", "cuda")
    selection = select_backend()
    assert selection.backend.name == "cuda" and selection.reason == "requested with LLAMA_HW_DEVICE=cuda"
    selection = select_backend("cpu")
    assert selection.backend.name == "cpu" and selection.reason == "requested with --device cpu"


def test_unknown_device_names_the_choices():
    with pytest.raises(UsageError, match=r"unknown device 'tpu'; choose one of auto, npu, cuda, cpu"):
        select_backend("tpu")


def test_explicit_unavailable_device_never_falls_back(no_torch_npu):
    with pytest.raises(DeviceUnavailable, match="--device npu is unavailable"):
        select_backend("npu")


def test_a_new_backend_is_one_file(tmp_path, monkeypatch):
    (tmp_path / "xpu.py").write_text(
        "from llama_hw.backends.cpu import CpuBackend\n"
        "class XpuBackend(CpuBackend):\n"
        "    name = 'xpu'\n"
        "    detection_order = 30\n"
        "BACKEND = XpuBackend\n"
    )
    monkeypatch.setattr(backends, "__path__", [*backends.__path__, str(tmp_path)])
    backends.backend_classes.cache_clear()
    try:
        assert list(backends.backend_classes()) == ["npu", "cuda", "xpu", "cpu"]
        assert select_backend("xpu").backend.name == "xpu"
    finally:
        backends.backend_classes.cache_clear()


# -- Ascend NPU through the fake torch_npu ---------------------------------------------------------


def test_npu_without_torch_npu_says_which_wheel(no_torch_npu):
    reason = NpuBackend().availability().reason
    assert "torch_npu is not installed" in reason
    assert f"pip install torch-npu=={TORCH_RELEASE}" in reason


def test_npu_without_cann_says_source_set_env(fake_torch_npu, monkeypatch):
    monkeypatch.setenv("FAKE_TORCH_NPU_FAIL", "cann")
    reason = NpuBackend().availability().reason
    assert "libhccl.so: cannot open shared object file" in reason
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in reason


def test_npu_version_skew_names_both_versions(fake_torch_npu, monkeypatch):
    monkeypatch.setenv("FAKE_TORCH_NPU_VERSION", "2.1.0.post3")
    reason = NpuBackend().availability().reason
    assert f"torch_npu 2.1.0.post3 does not match torch {torch.__version__}" in reason
    assert f"pip install torch-npu=={TORCH_RELEASE}" in reason and "pip install torch==2.1.0" in reason


def test_npu_post_release_of_the_same_torch_is_accepted(fake_torch_npu, monkeypatch):
    monkeypatch.setenv("FAKE_TORCH_NPU_VERSION", f"{TORCH_RELEASE}.post2")
    assert NpuBackend().availability().available


def test_npu_with_no_visible_device_names_the_variable(fake_torch_npu, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_COUNT", "0")
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    reason = NpuBackend().availability().reason
    assert "sees no NPU" in reason and "ASCEND_RT_VISIBLE_DEVICES=''" in reason and "npu-smi info" in reason


def test_ascend_910a_has_no_bf16(fake_torch_npu, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_NAME", "Ascend910A")
    npu = NpuBackend().require()
    assert npu.supported_precisions() == ("fp32", "fp16")
    assert npu.default_precision() == "fp16"
    with pytest.raises(UsageError, match="bf16 is not supported on Ascend910A .*Use --fp16"):
        npu.check_precision("bf16")
    assert npu.peak_tflops("fp16") == 256.0 and npu.peak_tflops("bf16") is None


def test_ascend_910b_runs_bf16(fake_torch_npu, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_NAME", "Ascend910B2")
    npu = NpuBackend().require()
    assert npu.supported_precisions() == ("fp32", "fp16", "bf16")
    assert npu.default_precision() == "bf16"
    assert npu.peak_tflops("bf16") == 354.0
    monkeypatch.setenv("LLAMA_HW_PEAK_TFLOPS", "bf16=376")  # a per-SKU figure
    assert npu.peak_tflops("bf16") == 376.0


def test_npu_distributed_facts(fake_torch_npu):
    npu = NpuBackend().require()
    assert npu.dist_backend == "hccl" and npu.deepspeed_accelerator == "npu"
    assert npu.visible_devices_env == "ASCEND_RT_VISIBLE_DEVICES"
    assert npu.trainer_arguments(world_size=16) == {"ddp_backend": "hccl"}
    env = npu.launcher_env(nproc_per_node=8)
    assert env["DS_ACCELERATOR"] == "npu"
    assert env["HCCL_CONNECT_TIMEOUT"] == "1200" and env["HCCL_EXEC_TIMEOUT"] == "1200"
    assert npu.device_count() == 8 and npu.device_name() == "Ascend910B3"
    assert npu.device(5) == torch.device("npu", 5)


def test_npu_binds_seeds_and_reports_memory(fake_torch_npu):
    npu = NpuBackend().require()
    npu.bind(3)
    npu.manual_seed(7)
    state = torch.npu._state
    assert state["current"] == 3 and state["seed"] == 7
    state.update(allocated=100, peak=900)
    assert npu.memory_stats().peak_allocated_bytes == 900
    npu.reset_peak_memory()
    assert npu.memory_stats().peak_allocated_bytes == 100


# -- CUDA through a patched torch.cuda --------------------------------------------------------------


def test_cuda_on_a_cpu_build_says_install_a_cuda_build(no_cuda):
    reason = CudaBackend().availability().reason
    assert "without CUDA support" in reason and "--index-url https://download.pytorch.org/whl/cu" in reason


def test_cuda_with_hidden_gpus_names_the_variable(fake_cuda, monkeypatch):
    fake_cuda["count"] = 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    reason = CudaBackend().availability().reason
    assert "sees no GPU" in reason and "CUDA_VISIBLE_DEVICES=''" in reason and "nvidia-smi" in reason


@pytest.mark.parametrize(
    "name, capability, precisions, bf16_peak, fp16_peak",
    [
        ("NVIDIA H100 80GB HBM3", (9, 0), ("fp32", "fp16", "bf16"), 989, 989),
        ("NVIDIA H100 PCIe", (9, 0), ("fp32", "fp16", "bf16"), 756, 756),
        ("NVIDIA A100-SXM4-80GB", (8, 0), ("fp32", "fp16", "bf16"), 312, 312),
        ("NVIDIA A800-SXM4-80GB", (8, 0), ("fp32", "fp16", "bf16"), 312, 312),
        ("Tesla V100-SXM2-32GB", (7, 0), ("fp32", "fp16"), None, 125),
        ("Some Future GPU", (12, 0), ("fp32", "fp16", "bf16"), None, None),
    ],
)
def test_cuda_precisions_and_peaks(fake_cuda, name, capability, precisions, bf16_peak, fp16_peak):
    fake_cuda.update(name=name, capability=capability)
    cuda = CudaBackend().require()
    assert cuda.supported_precisions() == precisions
    assert cuda.peak_tflops("bf16") == bf16_peak
    assert cuda.peak_tflops("fp16") == fp16_peak


def test_cuda_distributed_facts(fake_cuda):
    cuda = CudaBackend().require()
    assert cuda.dist_backend == "nccl" and cuda.deepspeed_accelerator == "cuda"
    assert cuda.visible_devices_env == "CUDA_VISIBLE_DEVICES"
    assert cuda.trainer_arguments(world_size=8) == {"ddp_backend": "nccl"}
    assert cuda.trainer_arguments(world_size=1) == {}
    assert cuda.launcher_env(8) == {"DS_ACCELERATOR": "cuda"}
    assert cuda.device(2) == torch.device("cuda", 2)
