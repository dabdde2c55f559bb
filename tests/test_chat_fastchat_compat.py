"""The runtime fixes fschat 0.2.36 needs on transformers 5: what breaks without them, and their undo."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from chat_support import BASE_CONTINUATION, PROMPT, one_torch_thread  # noqa: F401 - one_torch_thread is autouse
from llama_hw.backends import get_backend
from llama_hw.errors import UsageError
from llama_hw.patches import apply_patches
from llama_hw.patches.fastchat_compat import cache_parameter, context_length
from transformers.utils import ModelOutput

inference = pytest.importorskip("fastchat.serve.inference")
ORIGINAL_GENERATE_STREAM = inference.generate_stream  # FastChat's own, captured before any patch
FASTCHAT_PATCHES = ["fastchat_context_length", "fastchat_model_loader", "fastchat_generate_stream"]


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
    original_loader, original_stream = inference.load_model, inference.generate_stream
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
    assert inference.generate_stream is not original_stream
    report.revert()
    assert inference.load_model is original_loader and inference.generate_stream is original_stream
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


@dataclass
class CacheOnlyOutput(ModelOutput):
    logits: torch.Tensor | None = None
    cache: Any = None


class WithoutPastKeyValues(torch.nn.Module):
    """A causal LM as transformers 5.40 announces it: the KV cache is `cache` in and out, `past_key_values`
    is an unknown argument and no output field."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.generation_config = model, model.config, model.generation_config

    @property
    def device(self):
        return self.model.device

    def forward(self, input_ids, cache=None, use_cache=None, **kwargs):
        if "past_key_values" in kwargs:
            raise TypeError("forward() got an unexpected keyword argument 'past_key_values'")
        out = self.model(input_ids=input_ids, cache=cache, use_cache=use_cache, **kwargs)
        return CacheOnlyOutput(logits=out.logits, cache=out.cache)


class PastKeyValuesOutput(dict):
    """An output of transformers < 5.24: a mapping with attribute access, the cache under past_key_values
    (today's ModelOutput would rename that field to `cache`)."""

    __getattr__ = dict.__getitem__


class PastKeyValuesOnly(WithoutPastKeyValues):
    """A causal LM from before transformers 5.24: the cache is `past_key_values` in and out."""

    def forward(self, input_ids, past_key_values=None, use_cache=None, **kwargs):
        if "cache" in kwargs:
            raise TypeError("forward() got an unexpected keyword argument 'cache'")
        out = self.model(input_ids=input_ids, cache=past_key_values, use_cache=use_cache, **kwargs)
        return PastKeyValuesOutput(logits=out.logits, past_key_values=out.cache)


@pytest.fixture(scope="module")
def stories(stories260k_dir):
    from llama_hw.data import load_tokenizer
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(stories260k_dir), dtype=torch.float32).eval()
    return model, load_tokenizer(str(stories260k_dir))


def streamed(generate_stream, model, tokenizer) -> list[str]:
    """Every text FastChat's chat loop would show, greedy, from PROMPT."""
    params = {"prompt": PROMPT, "temperature": 0.0, "max_new_tokens": 24, "echo": False, "stop_token_ids": []}
    return [step["text"] for step in generate_stream(model, tokenizer, params, "cpu", 512, stream_interval=2)]


def test_chat_streams_the_same_text_through_the_cache_under_its_current_name(stories, infer_patches):
    model, tokenizer = stories
    today = streamed(ORIGINAL_GENERATE_STREAM, model, tokenizer)
    assert BASE_CONTINUATION in today[-1] and len(today) > 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the deprecated name is no longer used
        assert streamed(inference.generate_stream, model, tokenizer) == today
    assert cache_parameter(model) == "cache" and cache_parameter(WithoutPastKeyValues(model)) == "cache"


def test_chat_runs_on_a_transformers_without_past_key_values(stories, infer_patches):
    model, tokenizer = stories
    future = WithoutPastKeyValues(model)
    with pytest.raises((TypeError, AttributeError), match="past_key_values"):
        streamed(ORIGINAL_GENERATE_STREAM, future, tokenizer)  # FastChat 0.2.36 as it is
    today = streamed(ORIGINAL_GENERATE_STREAM, model, tokenizer)
    assert streamed(inference.generate_stream, future, tokenizer) == today


def test_chat_keeps_working_with_the_name_before_the_rename(stories, infer_patches):
    model, tokenizer = stories
    older = PastKeyValuesOnly(model)
    assert cache_parameter(older) == "past_key_values"
    assert streamed(inference.generate_stream, older, tokenizer) == streamed(ORIGINAL_GENERATE_STREAM, model, tokenizer)
