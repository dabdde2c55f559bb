"""chunked_cross_entropy beyond the CPU: every backend, heads that ZeRO-3 / FSDP2 shard, and --use_liger_kernel.

The chunked pass is plain torch ops, so its numerics are the same on any backend; the tests here pin what
differs per run: which backends it serves, how a sharded head weight is gathered (or why the stock head
runs), that two gloo ranks under ZeRO-3 and FSDP2 train exactly like one stock process, and that with
Liger on, Liger's kernels are applied and reported while our head steps aside.
"""

from __future__ import annotations

import copy
import importlib.machinery
import logging
import sys
import types

import pytest
import torch

from bench_support import tiny_llama
from llama_hw.backends.cpu import CpuBackend
from llama_hw.backends.cuda import CudaBackend
from llama_hw.patches import apply_patches, describe_patches
from llama_hw.patches import chunked_cross_entropy as head
from patches_support import clean_env, npu  # noqa: F401 - fixtures (clean_env is autouse)

CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def outcome(report, name):
    return next(o for o in report.outcomes if o.name == name)


def loss_and_grads(model, ids, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def batch(vocab=384):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 24), generator=generator)
    labels = ids.clone()
    labels[:, :6] = -100  # a prompt
    return ids, labels


def test_the_chunked_head_is_offered_on_every_backend(npu):
    for backend in (CpuBackend(), CudaBackend(), npu):
        described = {d["name"]: d for d in describe_patches(backend)}
        assert described["chunked_cross_entropy"]["status"] == "applies", backend.name


@pytest.mark.parametrize("backend_name", ["cuda", "npu"])
def test_patched_loss_and_gradients_equal_stock_whatever_the_backend(backend_name, request):
    backend = CudaBackend() if backend_name == "cuda" else request.getfixturevalue("npu")
    stock = tiny_llama().train()
    patched = copy.deepcopy(stock)
    report = apply_patches(patched, backend, "train", selection="chunked_cross_entropy")
    assert "chunked_cross_entropy" in report.applied  # process-level patches join the first call of a process
    ids, labels = batch()
    expected, expected_grads = loss_and_grads(stock, ids, labels)
    got, grads = loss_and_grads(patched, ids, labels)
    assert got.logits is None
    torch.testing.assert_close(got.loss, expected.loss, **CLOSE)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, **CLOSE, msg=lambda m, n=name: f"{n}: {m}")
    report.revert()


class Status:
    """deepspeed.runtime.zero.partition_parameters.ZeroParamStatus as the patch reads it (by name)."""

    def __init__(self, name):
        self.name = name


def test_a_zero3_head_is_gathered_through_deepspeeds_external_parameter_api(caplog):
    pytest.importorskip("deepspeed")
    model = tiny_llama().train()
    weight = model.lm_head.weight
    weight.ds_id = 7  # what ZeRO-3 sets on a partitioned parameter
    weight.ds_status = Status("AVAILABLE")
    report = apply_patches(model, CpuBackend(), "train", selection="chunked_cross_entropy")
    assert outcome(report, "chunked_cross_entropy").reason == (
        "ZeRO-3: the head weight is gathered for the model's forward (register_external_parameter)")
    assert model._external_params == {id(weight): weight}  # DeepSpeed fetches it with the model's own params
    ids, labels = batch()
    assert model(input_ids=ids, labels=labels).logits is None  # gathered: the chunked pass runs
    weight.ds_status = Status("NOT_AVAILABLE")
    with caplog.at_level(logging.WARNING, logger=head.__name__):
        for _ in range(2):
            assert model(input_ids=ids, labels=labels).logits.shape == (2, 24, 384)  # the stock head
    warnings = [r.getMessage() for r in caplog.records if r.name == head.__name__]
    assert warnings == ["chunked_cross_entropy: DeepSpeed ZeRO-3 has not gathered the head weight (it was "
                        "partitioned after the patch); training steps take the stock head"]  # once
    report.revert()
    assert model._external_params == {} and "forward" not in vars(model)


@pytest.fixture
def one_rank_group(monkeypatch):
    import torch.distributed as dist
    from train_support import free_port

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_head_that_is_its_own_fsdp2_unit_takes_the_stock_head_and_says_why(one_rank_group, caplog):
    """Sharded on its own, the head's weight is a DTensor shard until lm_head itself runs: the chunked pass
    cannot read it, so the step runs the stock forward (FSDP2 gathers the head there) and says so."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, stock = tiny_llama().train(), tiny_llama().train()
    # an explicit CPU mesh: FSDP2's default asks torch for the accelerator, which the fake torch_npu of other
    # tests leaves renamed in this process
    fully_shard(model.lm_head, mesh=init_device_mesh("cpu", (1,)))
    report = apply_patches(model, CpuBackend(), "train", selection="chunked_cross_entropy")
    ids, labels = batch()
    with caplog.at_level(logging.WARNING, logger=head.__name__):
        out = model(input_ids=ids, labels=labels)
    assert out.logits is not None
    torch.testing.assert_close(out.loss, stock(input_ids=ids, labels=labels).loss, **CLOSE)
    assert [r.getMessage() for r in caplog.records if r.name == head.__name__] == [
        "chunked_cross_entropy: the head weight is an FSDP2 DTensor shard here (the head is its own FSDP unit); "
        "training steps take the stock head"]  # fmt: skip
    report.revert()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["zero3", "fsdp"])
def test_two_sharded_gloo_ranks_train_like_one_stock_process(mode, tmp_path, stories260k_dir, dummy_conversations):
    """ZeRO-3 partitions the head, FSDP2 (load-time, on CPU) makes it a DTensor shard: the chunked pass
    must still run (no stock-head warning) and give the losses of an unpatched single process."""
    from train_support import logged_losses, small_run, torchrun_train, train_cli

    flags = {"zero3": ["--deepspeed", "zero3"],
             "fsdp": ["--fsdp", "full_shard auto_wrap", "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer"]}
    stock = train_cli(small_run(stories260k_dir, dummy_conversations, tmp_path / "stock", "--max_steps", "3"),
                      LLAMA_HW_PATCHES="all,-chunked_cross_entropy")  # fmt: skip
    assert stock.returncode == 0, stock.stderr[-3000:]
    argv = small_run(stories260k_dir, dummy_conversations, tmp_path / mode, "--max_steps", "3",
                     "--per_device_train_batch_size", "2", *flags[mode])  # fmt: skip
    sharded = torchrun_train(2, argv)
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    report_line = next(line for line in sharded.stdout.splitlines() if "chunked_cross_entropy" in line)
    assert report_line.split()[0] == "applied", report_line
    if mode == "zero3":
        assert "register_external_parameter" in report_line
    assert "take the stock head" not in sharded.stdout + sharded.stderr
    assert logged_losses(tmp_path / mode) == pytest.approx(logged_losses(tmp_path / "stock"), rel=1e-5)


# -- --use_liger_kernel ------------------------------------------------------------------------------


@pytest.fixture
def fake_liger(monkeypatch):
    """liger_kernel at its import boundary: `_apply_liger_kernel_to_instance`, doing what Liger documents for a
    Llama instance (module-level RoPE, the model's forward, each RMSNorm's forward); calls are recorded."""
    from transformers.models.llama import modeling_llama

    calls = []
    stock_rope = modeling_llama.apply_rotary_pos_emb

    def liger_rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        return stock_rope(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)

    def lce_forward(self, *args, **kwargs):
        raise AssertionError("not run in these tests")

    def apply_to_instance(model, **kwargs):
        calls.append(kwargs)
        if kwargs.get("rope", True):
            modeling_llama.apply_rotary_pos_emb = liger_rope
        if kwargs.get("fused_linear_cross_entropy", True):
            model.forward = types.MethodType(lce_forward, model)
        for module in model.modules():
            if isinstance(module, modeling_llama.LlamaRMSNorm):
                module.forward = types.MethodType(lambda self, x: x, module)

    package = types.ModuleType("liger_kernel")
    package.__path__ = []
    package.__spec__ = importlib.machinery.ModuleSpec("liger_kernel", None, is_package=True)
    transformers_part = types.ModuleType("liger_kernel.transformers")
    transformers_part._apply_liger_kernel_to_instance = apply_to_instance
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", transformers_part)
    return calls


def liger_args(tmp_path, **config):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path), use_liger_kernel=True, liger_kernel_config=config or None,
                             use_cpu=True, report_to=[])  # fmt: skip


def test_with_liger_on_cuda_its_kernels_are_applied_and_reported_and_our_head_steps_aside(fake_liger, tmp_path):
    from transformers.models.llama import modeling_llama

    model = tiny_llama().train()
    rope = modeling_llama.apply_rotary_pos_emb
    report = apply_patches(model, CudaBackend(), "train", training_args=liger_args(tmp_path, swiglu=False))
    liger = outcome(report, "liger_kernel")
    assert liger.status == "applied"
    assert liger.reason == ("Liger: modeling_llama: apply_rotary_pos_emb; the forward of 6 module(s) incl. the "
                            "model's (fused linear cross-entropy)")  # 2 layers x 2 norms + the final norm + model
    assert fake_liger == [{"swiglu": False}]  # the run's liger_kernel_config, as Trainer passes it
    assert outcome(report, "chunked_cross_entropy").reason == (
        "Liger's fused linear cross-entropy is used instead (--use_liger_kernel)")
    report.revert()
    assert modeling_llama.apply_rotary_pos_emb is rope
    assert not any("forward" in vars(module) for module in model.modules())


def test_liger_that_keeps_the_stock_loss_leaves_our_head_on(fake_liger, tmp_path):
    model = tiny_llama().train()
    args = liger_args(tmp_path, fused_linear_cross_entropy=False)
    report = apply_patches(model, CudaBackend(), "train", training_args=args)
    assert {"liger_kernel", "chunked_cross_entropy"} <= set(report.applied)
    assert "incl. the model's" not in outcome(report, "liger_kernel").reason
    report.revert()


def test_without_liger_the_flag_is_reported_and_the_head_still_steps_aside(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # not importable, as when it is not installed
    model = tiny_llama().train()
    report = apply_patches(model, CudaBackend(), "train", training_args=liger_args(tmp_path))
    report.revert()
    assert outcome(report, "liger_kernel").reason.startswith("liger_kernel is not installed (pip install liger-kernel)")
    assert outcome(report, "chunked_cross_entropy").status == "skipped"  # Trainer will use or refuse Liger
    plain = apply_patches(model, CudaBackend(), "train", training_args=None)
    plain.revert()
    assert outcome(plain, "liger_kernel").reason == "--use_liger_kernel is not set"
    assert "chunked_cross_entropy" in plain.applied
