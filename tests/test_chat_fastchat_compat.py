"""The runtime fixes fschat 0.2.36 needs on transformers 5: what breaks without them, and their undo."""

from __future__ import annotations

import pytest
import torch

from chat_support import BASE_CONTINUATION, PROMPT, one_torch_thread  # noqa: F401 - one_torch_thread is autouse
from llama_hw.backends import get_backend
from llama_hw.errors import UsageError
from llama_hw.patches import apply_patches
from llama_hw.patches.fastchat_compat import context_length

inference = pytest.importorskip("fastchat.serve.inference")
FASTCHAT_PATCHES = ["fastchat_context_length", "fastchat_model_loader"]


@pytest.fixture
def stories_config(stories260k_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(stories260k_dir))


@pytest.fixture
def infer_patches():
    report = apply_patches(None, get_backend("cpu"), mode="infer")
    yield report
    report.revert()


def test_fastchat_reads_a_rope_factor_transformers_5_no_longer_writes(stories_config):
    assert stories_config.rope_scaling == {"rope_theta": 10000.0, "rope_type": "default"}
    with pytest.raises(KeyError, match="factor"):
        inference.get_context_length(stories_config)  # unpatched fschat 0.2.36
    assert context_length(stories_config) == 512
    stories_config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert context_length(stories_config) == 1024  # FastChat's arithmetic where there is a factor


def test_patches_apply_in_inference_only_and_revert_exactly(stories_config):
    original_loader = inference.load_model
    train = apply_patches(None, get_backend("cpu"), mode="train")
    assert not set(FASTCHAT_PATCHES) & set(train.applied)
    train.revert()

    report = apply_patches(None, get_backend("cpu"), mode="infer")
    assert set(FASTCHAT_PATCHES) <= set(report.applied)
    assert inference.get_context_length(stories_config) == 512
    import fastchat.model
    import fastchat.utils

    assert fastchat.utils.get_context_length is inference.get_context_length
    assert fastchat.model.load_model is inference.load_model is not original_loader
    report.revert()
    assert inference.load_model is original_loader
    with pytest.raises(KeyError):
        inference.get_context_length(stories_config)


class ScriptedIO(inference.ChatIO):
    def __init__(self, lines):
        self.lines, self.replies = list(lines), []

    def prompt_for_input(self, role):
        return self.lines.pop(0)

    def prompt_for_output(self, role):
        pass

    def stream_output(self, output_stream):
        text = ""
        for outputs in output_stream:
            text = outputs["text"]
        self.replies.append(text)
        return text

    def print_output(self, text):
        pass


def test_fastchats_own_chat_loop_loads_through_llama_hw(stories260k_dir, infer_patches, capsys):
    chatio = ScriptedIO([PROMPT, "!!exit"])
    # FastChat's CLI arguments, as `python -m fastchat.serve.cli --device cpu` passes them.
    inference.chat_loop(str(stories260k_dir), "cpu", 1, None, None, False, False, "raw", None, 0.0, 1.0, 24, chatio,
                        judge_sent_end=False, debug=False)
    assert BASE_CONTINUATION in chatio.replies[0]

    model, tokenizer = inference.load_model(str(stories260k_dir), device="cpu", num_gpus=1)
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer(PROMPT).input_ids[0] == tokenizer.bos_token_id == 1
    with pytest.raises(UsageError, match="fp16 is not supported"):
        inference.load_model(str(stories260k_dir), device="cpu", dtype=torch.float16)
    with pytest.raises(UsageError, match="--num-devices 2 is more than"):
        inference.load_model(str(stories260k_dir), device="cpu", num_gpus=2)
