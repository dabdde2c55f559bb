"""The chunked head under a peft LoRA wrapper: peft passes return_dict=None, which must still take the chunked
path (before the fix every LoRA run silently took the stock [tokens, vocab] logits)."""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from llama_hw.backends import get_backend
from llama_hw.patches import apply_patches


def lora_model(seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000)  # fmt: skip
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_dropout=0.0, init_lora_weights=False,
                                                                target_modules=["q_proj", "v_proj"],
                                                                task_type="CAUSAL_LM"))  # fmt: skip
    return model.train()


def test_lora_training_step_takes_the_chunked_head_with_stock_numerics():
    stock = lora_model()
    patched = copy.deepcopy(stock)
    report = apply_patches(patched, get_backend("cpu"), mode="train", selection="chunked_cross_entropy")
    try:
        ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
        labels = ids.clone()
        labels[:, :5] = -100
        expected = stock(input_ids=ids, labels=labels)
        got = patched(input_ids=ids, labels=labels)
        assert got.logits is None  # the chunked path ran: no [tokens, vocab] tensor
        assert expected.logits is not None
        torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
        expected.loss.backward()
        got.loss.backward()
        grads = {name: p.grad for name, p in stock.named_parameters() if p.requires_grad}
        for name, p in patched.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-6)
    finally:
        report.revert()
