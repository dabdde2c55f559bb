"""Score a model on the demo's held-out conversations: greedy replies, exact match.

Every assistant turn of a held-out conversation is one question: the model sees the conversation up to
that turn (with the reference replies before it), rendered by the FastChat template it was trained
with — the prompt the chat CLI would feed it — and greedily generates a reply until EOS. The reply
counts when it equals the reference exactly (surrounding whitespace ignored). An untrained model
scores 0; the task cannot be guessed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

Turn = dict[str, str]  # ShareGPT: {"from": "human" | "gpt", "value": ...}


@dataclass(frozen=True)
class Question:
    text: str  # what the user asked
    prompt: str  # the whole rendered conversation up to the reply, as the model sees it
    reference: str


@dataclass
class EvalResult:
    correct: int
    total: int
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (question, reference, reply)

    @property
    def exact_match(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def summary(self) -> str:
        return f"exact match {self.exact_match:.1%} ({self.correct}/{self.total} held-out replies)"


def load_conversations(path: str | os.PathLike) -> list[list[Turn]]:
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    return [record["conversations"] for record in records]


def questions(conversations: Sequence[Sequence[Turn]], template: str) -> list[Question]:
    """One generation prompt per assistant turn, rendered with FastChat's `template`."""
    from fastchat.conversation import get_conv_template

    found = []
    for turns in conversations:
        conv = get_conv_template(template)
        for turn in turns:
            if turn["from"] == "human":
                conv.append_message(conv.roles[0], turn["value"])
                continue
            conv.append_message(conv.roles[1], None)
            found.append(Question(conv.messages[-2][1], conv.get_prompt(), turn["value"]))
            conv.update_last_message(turn["value"])
    return found


@torch.no_grad()
def generate_replies(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 64) -> list[str]:
    """Greedy replies, decoded without special tokens, in batches of left-padded prompts."""
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues every prompt from its last token
    was_training = model.training
    model.eval()
    replies = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
            batch = {key: value.to(device) for key, value in batch.items()}
            output = model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            replies += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return replies


def evaluate(model, tokenizer, template: str, conversations: Sequence[Sequence[Turn]], limit: int | None = None,
             max_new_tokens: int = 32, keep_samples: int = 3) -> EvalResult:
    """Exact-match score of `model`'s greedy replies on `conversations` (the first `limit` questions)."""
    asked = questions(conversations, template)[:limit]
    replies = generate_replies(model, tokenizer, [q.prompt for q in asked], max_new_tokens=max_new_tokens)
    correct = [reply.strip() == q.reference.strip() for q, reply in zip(asked, replies)]
    samples = [(q.text, q.reference, reply.strip()) for q, reply in zip(asked[:keep_samples], replies)]
    return EvalResult(sum(correct), len(asked), samples)


def evaluate_model_dir(model_dir: str | os.PathLike, backend, template: str, heldout: str | os.PathLike,
                       limit: int | None = None, max_new_tokens: int = 16) -> EvalResult:
    """Load a saved model and its tokenizer (as chat does, in fp32) and score it on `heldout`."""
    from llama_hw.data import load_tokenizer
    from llama_hw.models import load_model

    model = load_model(model_dir, backend, precision="fp32")
    tokenizer = load_tokenizer(str(model_dir))
    return evaluate(model, tokenizer, template, load_conversations(heldout), limit=limit,
                    max_new_tokens=max_new_tokens)
