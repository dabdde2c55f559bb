"""The patch machinery as a user relies on it: the report, applying twice = once, exact revert, the
LLAMA_HW_PATCHES control, process-level patches (operator compile mode, both DeepSpeed branches), the
attention choice on CPU / CUDA, peft models, `llama-hw env`, and that no installed file is touched."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAKES, REPO, subprocess_env
from llama_hw.backends.cpu import CpuBackend
from llama_hw.backends.cuda import CudaBackend
from llama_hw.errors import DeviceUnavailable, UsageError
from llama_hw.patches import apply_patches, describe_patches
from patches_support import (  # noqa: F401 - clean_env (autouse) and npu are fixtures
    clean_env,
    npu,
    assert_same,
    forward_backward,
    fresh_copy,
    padded_batch,
    random_gqa_llama,
    single_thread,  # noqa: F401 - autouse fixture
)

# forward_backward compares logits, which chunked_cross_entropy leaves out of a training forward
KEEP_LOGITS = "all,-chunked_cross_entropy"
NPU_MODEL_PATCHES = ["npu_fusion_attention", "npu_fused_softmax", "npu_rms_norm", "npu_rotary_mul", "npu_swiglu"]


@pytest.fixture(scope="module")
def base_model():
    return random_gqa_llama()


@pytest.fixture
def model(base_model):
    return fresh_copy(base_model)


def outcome(report, name):
    return next(o for o in report.outcomes if o.name == name)


def batch(model):
    return padded_batch([64, 57, 40], 64, "right", model.config.vocab_size)


def snapshot(model):
    """Everything the patches may change, by identity or value."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.models.llama import modeling_llama

    return {
        "forwards": {name: vars(m).get("forward") for name, m in model.named_modules()},
        "rotary": modeling_llama.apply_rotary_pos_emb,
        "attention": dict(AttentionInterface._global_mapping),
        "masks": dict(AttentionMaskInterface._global_mapping),
        "implementation": model.config._attn_implementation_internal,
        "ds_accelerator": os.environ.get("DS_ACCELERATOR"),
        "jit_compile_off": torch.npu.is_jit_compile_false() if hasattr(torch, "npu") else None,
    }


# -- the report -----------------------------------------------------------------------------------


def test_report_on_a_910b_applies_the_fused_kernels_and_says_why_others_are_skipped(npu, model):
    report = apply_patches(model, npu, "train")
    try:
        text = report.render()
        data = report.to_dict()
    finally:
        report.revert()
    assert text.splitlines()[0] == "patches (npu, llama, train; LLAMA_HW_PATCHES=all):"
    for line in [
        r"applied  npu_jit_compile_off\s+torch\.npu\.set_compile_mode\(jit_compile=True\) -> False",
        r"skipped  deepspeed_npu_plugin\s+needs deepspeed<0\.10\.1, found \d\S*",
        r"applied  deepspeed_npu_accelerator\s+DS_ACCELERATOR \(auto-detection\) -> npu",
        r"applied  npu_fusion_attention\s+model attention implementation -> npu_fusion_attention( \(.*\))?",
        r"skipped  npu_fused_softmax\s+npu_fusion_attention is used instead",
        r"applied  npu_rms_norm\s+LlamaRMSNorm\.forward of this model -> npu_rms_norm",
        r"applied  npu_rotary_mul\s+modeling_llama\.apply_rotary_pos_emb -> npu_rotary_mul",
        r"applied  npu_swiglu\s+LlamaMLP\.forward of this model -> npu_swiglu",
    ]:
        assert re.search(r"^  " + line + "$", text, re.MULTILINE), (line, text)
    assert json.loads(json.dumps(data)) == data
    assert data["backend"] == "npu" and data["model_type"] == "llama" and data["mode"] == "train"
    statuses = {p["name"]: p["status"] for p in data["patches"]}
    assert {name: statuses[name] for name in NPU_MODEL_PATCHES} == {
        "npu_fusion_attention": "applied", "npu_fused_softmax": "skipped", "npu_rms_norm": "applied",
        "npu_rotary_mul": "applied", "npu_swiglu": "applied",
    }  # fmt: skip


def test_report_on_a_910a_uses_fused_softmax_and_names_the_chip(npu, model, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_NAME", "Ascend910A")
    report = apply_patches(model, npu, "infer")
    report.revert()
    npu_patches = [name for name in report.applied if name.startswith("npu_")]
    assert npu_patches == ["npu_jit_compile_off", "npu_fused_softmax", "npu_rotary_mul"]
    fusion = outcome(report, "npu_fusion_attention")
    assert fusion.reason == "needs Atlas A2/A3 (Ascend910B, 910_93); this is Ascend910A"
    assert outcome(report, "npu_rms_norm").reason.endswith("this is Ascend910A")
    assert outcome(report, "deepspeed_npu_accelerator").reason == "for train only"


def test_model_checks_skip_what_the_model_cannot_use(npu, stories260k_dir):
    from patches_support import stories260k

    report = apply_patches(stories260k(stories260k_dir), npu, "train")
    report.revert()
    assert outcome(report, "npu_rotary_mul").reason == "head size 8 is not a multiple of 64 below 896"
    assert outcome(report, "npu_fusion_attention").status == "applied"


# -- idempotence and revert -------------------------------------------------------------------------


def test_applying_twice_equals_applying_once(npu, model):
    ids, mask = batch(model)
    first = apply_patches(model, npu, "train", selection=KEEP_LOGITS)
    once = snapshot(model), forward_backward(model, ids, mask)
    second = apply_patches(model, npu, "train", selection=KEEP_LOGITS)
    twice = snapshot(model), forward_backward(model, ids, mask)
    assert {o.name: o.status for o in second.outcomes} == {o.name: o.status for o in first.outcomes}
    assert all(o.reason == "already applied" for o in second.outcomes if o.status == "applied")
    assert twice[0] == once[0]  # the very same replacement objects, not a second layer of wrapping
    assert_same(twice[1], once[1], tolerance=0.0)
    second.revert()  # either report reverts everything; the other then has nothing left to do
    first.revert()


def test_revert_restores_the_original_behaviour_exactly(npu, model):
    ids, mask = batch(model)
    before = snapshot(model), forward_backward(model, ids, mask)
    report = apply_patches(model, npu, "train")
    assert snapshot(model) != before[0]
    report.revert()
    after = snapshot(model), forward_backward(model, ids, mask)
    assert after[0] == before[0]
    assert_same(after[1], before[1], tolerance=0.0)
    report.revert()  # a second revert is harmless
    assert snapshot(model) == before[0]


def test_two_models_share_registrations_until_the_last_revert(npu, base_model):
    from transformers.models.llama import modeling_llama

    original_rotary = modeling_llama.apply_rotary_pos_emb
    first, second = fresh_copy(base_model), fresh_copy(base_model)
    ids, mask = batch(first)
    expected = forward_backward(first, ids, mask)
    report_first = apply_patches(first, npu, "train", selection=KEEP_LOGITS)
    report_second = apply_patches(second, npu, "train", selection=KEEP_LOGITS)
    report_first.revert()
    assert modeling_llama.apply_rotary_pos_emb is not original_rotary  # the second model still uses it
    assert second.config._attn_implementation == "npu_fusion_attention"
    assert_same(forward_backward(second, ids, mask), expected)
    report_second.revert()
    assert modeling_llama.apply_rotary_pos_emb is original_rotary


def test_a_peft_model_is_patched_through_its_wrapper(npu, model):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "gate_proj", "up_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    ids, mask = batch(model)
    reference = forward_backward(peft_model, ids, mask)
    report = apply_patches(peft_model, npu, "train", selection=KEEP_LOGITS)
    try:
        patched = forward_backward(peft_model, ids, mask)
    finally:
        report.revert()
    assert "npu_swiglu" in report.applied and report.model_type == "llama"
    assert any("lora_A" in name for name in patched.grads)
    assert_same(patched, reference)


# -- user control -------------------------------------------------------------------------------------


def test_llama_hw_patches_none_turns_everything_off(npu, model, monkeypatch):
    monkeypatch.setenv("LLAMA_HW_PATCHES", "none")
    report = apply_patches(model, npu, "train")
    assert report.applied == [] and report.selection == "none"
    assert all(o.reason == "turned off by LLAMA_HW_PATCHES=none" for o in report.outcomes)
    assert model.config._attn_implementation == "eager"


def test_a_list_of_names_and_exclusions_choose_patches(npu, model, monkeypatch):
    monkeypatch.setenv("LLAMA_HW_PATCHES", "npu_rms_norm, npu_swiglu")
    report = apply_patches(model, npu, "train")
    report.revert()
    assert report.applied == ["npu_rms_norm", "npu_swiglu"]
    report = apply_patches(model, npu, "train", selection="all,-npu_fusion_attention")  # the argument wins
    report.revert()
    assert "npu_fusion_attention" not in report.applied and "npu_fused_softmax" in report.applied
    assert outcome(report, "npu_fusion_attention").reason == "turned off by selection=all,-npu_fusion_attention"
    assert report.render().splitlines()[0].endswith("; selection=all,-npu_fusion_attention):")


@pytest.mark.parametrize("selection", ["npu_rms_nrom", "none,npu_swiglu"])
def test_a_bad_selection_is_a_usage_error_listing_the_valid_names(npu, model, selection, monkeypatch):
    monkeypatch.setenv("LLAMA_HW_PATCHES", selection)
    with pytest.raises(UsageError) as error:
        apply_patches(model, npu, "train")
    assert f"LLAMA_HW_PATCHES='{selection}'" in str(error.value)
    assert all(name in str(error.value) for name in NPU_MODEL_PATCHES)
    assert model.config._attn_implementation == "eager"


# -- process-level patches ----------------------------------------------------------------------------


def test_without_a_model_only_process_patches_run_and_jit_compile_is_turned_off(npu):
    assert not torch.npu.is_jit_compile_false()
    report = apply_patches(None, npu, "train")
    assert {o.scope for o in report.outcomes} == {"process"}
    assert torch.npu.is_jit_compile_false()
    report.revert()
    assert not torch.npu.is_jit_compile_false()


def fake_distribution(root: Path, name: str, version: str) -> None:
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def old_deepspeed(tmp_path, monkeypatch):
    """DeepSpeed 0.9.5 as importlib.metadata reports it (first on sys.path); deepspeed_npu not installed."""
    fake_distribution(tmp_path, "deepspeed", "0.9.5")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("deepspeed_npu", None)


def test_old_deepspeed_imports_the_deepspeed_npu_plugin(npu, old_deepspeed):
    (old_deepspeed / "deepspeed_npu.py").write_text("PLUGGED_IN = True\n")
    report = apply_patches(None, npu, "train")
    report.revert()
    assert sys.modules["deepspeed_npu"].PLUGGED_IN
    assert outcome(report, "deepspeed_npu_plugin").reason == "stays for the life of the process"
    assert outcome(report, "deepspeed_npu_accelerator").reason == "needs deepspeed>=0.10.1, found 0.9.5"
    assert "DS_ACCELERATOR" not in os.environ


def test_old_deepspeed_without_the_plugin_fails_clearly_and_rolls_back(npu, old_deepspeed):
    with pytest.raises(DeviceUnavailable) as error:
        apply_patches(None, npu, "train")
    message = str(error.value)
    assert "DeepSpeed 0.9.5 predates native NPU support (0.10.1)" in message
    assert "https://gitee.com/ascend/DeepSpeed" in message and "deepspeed>=0.10.1" in message
    assert "LLAMA_HW_PATCHES=-deepspeed_npu_plugin" in message
    assert not torch.npu.is_jit_compile_false()  # the compile-mode patch applied before it was undone
    report = apply_patches(None, npu, "infer")  # inference does not need DeepSpeed
    report.revert()


def test_new_deepspeed_only_sets_ds_accelerator(npu, monkeypatch):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    report = apply_patches(None, npu, "train")
    assert os.environ["DS_ACCELERATOR"] == "npu" and "deepspeed_npu" not in sys.modules
    assert outcome(report, "deepspeed_npu_plugin").status == "skipped"
    report.revert()
    assert "DS_ACCELERATOR" not in os.environ
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    report = apply_patches(None, npu, "train")
    report.revert()
    assert outcome(report, "deepspeed_npu_accelerator").reason == "DS_ACCELERATOR=cpu is set by the user and kept"


# -- CPU and CUDA ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [CpuBackend(), CudaBackend()], ids=["cpu", "cuda"])
def test_cpu_and_cuda_name_their_deepspeed_accelerator_and_revert_it(backend, monkeypatch):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    report = apply_patches(None, backend, "train")
    assert os.environ["DS_ACCELERATOR"] == backend.deepspeed_accelerator
    assert outcome(report, "deepspeed_accelerator").status == "applied"
    report.revert()
    assert "DS_ACCELERATOR" not in os.environ
    monkeypatch.setenv("DS_ACCELERATOR", "xpu")
    report = apply_patches(None, backend, "infer")
    report.revert()
    assert outcome(report, "deepspeed_accelerator").reason == "DS_ACCELERATOR=xpu is set by the user and kept"
    assert os.environ["DS_ACCELERATOR"] == "xpu"


def test_a_cpu_training_run_does_not_print_deepspeeds_accelerator_guess(tmp_path, stories260k_dir, dummy_conversations):
    """DeepSpeed warned "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to
    detect it." in every single-process run: a fresh process, since DeepSpeed decides once per process."""
    from train_support import small_run, train_cli

    result = train_cli(small_run(stories260k_dir, dummy_conversations, tmp_path / "out", "--max_steps", "1"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "deepspeed_accelerator" in result.stdout  # the report names the patch
    assert "Setting accelerator to CPU" not in output and "unable to detect" not in output




def test_cpu_runs_sdpa_and_reverts_to_the_loaded_implementation(model):
    ids, mask = batch(model)
    reference = forward_backward(model, ids, mask)
    report = apply_patches(model, CpuBackend(), "train", selection="sdpa_attention")
    assert report.applied == ["sdpa_attention"] and model.config._attn_implementation == "sdpa"
    patched = forward_backward(model, ids, mask)
    report.revert()
    assert model.config._attn_implementation == "eager"
    assert_same(patched, reference)


def test_cuda_prefers_flash_attention_2_when_installed_and_the_dtype_allows(model, monkeypatch):
    from llama_hw.patches import torch_attention

    cuda = CudaBackend()
    monkeypatch.setattr(torch_attention, "is_flash_attn_available", lambda: False)
    described = {d["name"]: d for d in describe_patches(cuda)}
    assert described["flash_attention_2"]["reason"] == "flash_attn is not installed (pip install flash-attn)"
    assert described["sdpa_attention"]["status"] == "applies"
    monkeypatch.setattr(torch_attention, "is_flash_attn_available", lambda: True)
    described = {d["name"]: d for d in describe_patches(cuda)}
    assert described["flash_attention_2"]["status"] == "applies"
    assert described["sdpa_attention"]["reason"] == "flash_attention_2 is used instead"
    report = apply_patches(model, cuda, "train")  # an fp32 model: no flash-attention
    report.revert()
    flash = outcome(report, "flash_attention_2")
    assert flash.reason == "the model is torch.float32; flash-attention 2 needs fp16 or bf16"
    assert outcome(report, "sdpa_attention").status == "applied"


# -- installed files and `llama-hw env` ---------------------------------------------------------------


def installed_sources() -> dict[str, str]:
    digests = {}
    for package in ("transformers", "accelerate", "peft", "deepspeed", "fastchat"):
        spec = importlib.util.find_spec(package)
        if spec is None:
            continue
        for root in spec.submodule_search_locations:
            for path in sorted(Path(root).rglob("*.py")):
                digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def test_no_installed_file_changes(npu, model, monkeypatch):
    before = installed_sources()
    assert any("/transformers/" in path for path in before)
    ids, mask = batch(model)
    reports = [apply_patches(model, npu, "train", selection=KEEP_LOGITS), apply_patches(None, npu, "infer")]
    forward_backward(model, ids, mask)
    monkeypatch.setenv("FAKE_NPU_NAME", "Ascend910A")
    other = fresh_copy(model)
    reports.append(apply_patches(other, npu, "infer"))
    other.generate(input_ids=ids[:1, :40], max_new_tokens=3, do_sample=False)
    reports.append(apply_patches(fresh_copy(model), CpuBackend(), "train"))
    for report in reversed(reports):
        report.revert()
    assert installed_sources() == before


def run_env(tmp_path, *args, **env):
    return subprocess.run(
        [sys.executable, "-m", "llama_hw", "env", *args], capture_output=True, text=True, cwd=REPO, timeout=120,
        env=subprocess_env(PYTHONPATH=str(FAKES), LLAMA_HW_CACHE_DIR=str(tmp_path), **env),
    )  # fmt: skip


def test_llama_hw_env_lists_the_patches_of_the_selected_backend(tmp_path):
    result = run_env(tmp_path, "--json", FAKE_NPU_NAME="Ascend910B3", LLAMA_HW_PATCHES="all,-npu_swiglu")
    assert result.returncode == 0, result.stderr
    patches = {p["name"]: p for p in json.loads(result.stdout)["patches"]}
    assert patches["npu_fusion_attention"]["status"] == "applies"
    assert patches["npu_swiglu"]["reason"] == "turned off by LLAMA_HW_PATCHES=all,-npu_swiglu"
    assert "sdpa_attention" not in patches  # CUDA / CPU patches are not listed for an NPU
    result = run_env(tmp_path, FAKE_NPU_NAME="Ascend910A", LLAMA_HW_PATCHES="npu_swiglu,bogus")
    assert result.returncode == 2 and "unknown patch 'bogus' in LLAMA_HW_PATCHES" in result.stderr


def test_a_failing_patch_leaves_what_an_earlier_call_applied_in_place(npu, old_deepspeed):
    inference = apply_patches(None, npu, "infer")  # compile mode off, no DeepSpeed patch in inference
    with pytest.raises(DeviceUnavailable):
        apply_patches(None, npu, "train")
    assert torch.npu.is_jit_compile_false()
    inference.revert()
    assert not torch.npu.is_jit_compile_false()
