"""Render a conversation into the prompt text the model sees, and find the text it is trained on.

Templates come from FastChat (`fastchat.conversation.get_conv_template(name)`; every registered one
that renders training prompts) or from the tokenizer's own `chat_template` (name "tokenizer").

The trained text of an assistant turn is what the template appends when that reply is added to the
conversation: for `vicuna_v1.1`, " Sure!</s>" after "ASSISTANT:"; for `llama-2`, " Sure! </s><s>" after
"[/INST]". It is found by rendering the generation prompt (the conversation so far plus an empty
assistant turn: exactly what the chat CLI feeds the model) and the conversation including the reply;
both must be prefixes of the full prompt, and the difference is the span. That is FastChat's intent
(reply plus the separator that ends it) without its string splitting and hard-coded token offsets.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llama_hw.data.formats import Turn
from llama_hw.errors import UsageError

TOKENIZER_TEMPLATE = "tokenizer"
DEFAULT_TEMPLATE = "vicuna_v1.1"  # FastChat's train.py default
TRAINABLE_EXAMPLES = "vicuna_v1.1, llama-2, alpaca, mistral, zephyr, or tokenizer"
_PROBE: list[Turn] = [
    ("user", "Hi there"),
    ("assistant", "Hello! How can I help?"),
    ("user", "Tell me a joke"),
    ("assistant", "Why did the chicken cross the road?"),
]


@dataclass(frozen=True)
class Rendered:
    """A prompt and the [start, end) character spans of the text trained on."""

    text: str
    spans: tuple[tuple[int, int], ...]


class Template(Protocol):
    name: str
    add_special_tokens: bool  # whether tokenizing the prompt adds BOS / EOS, as the matching chat path does

    def render(self, turns: Sequence[Turn]) -> Rendered: ...


def get_template(name: str, tokenizer=None) -> Template:
    """The template called `name`: a FastChat template, or "tokenizer" for the tokenizer's chat_template."""
    template = ChatTemplate(tokenizer) if name == TOKENIZER_TEMPLATE else FastChatTemplate(name)
    template.render(_PROBE)  # fail at startup, not at record 1234, if the template cannot be trained with
    return template


def fastchat_template_names() -> list[str]:
    from fastchat.conversation import conv_templates

    return sorted(conv_templates)


@dataclass(frozen=True)
class FastChatTemplate:
    name: str
    add_special_tokens: bool = True  # FastChat's chat CLI calls tokenizer(prompt): BOS included

    def __post_init__(self):
        names = fastchat_template_names()
        if self.name not in names:
            close = difflib.get_close_matches(self.name, names, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise UsageError(
                f"unknown --template {self.name!r}: {hint}use a FastChat template name "
                f"({', '.join(names[:8])}, ... {len(names)} in all) or {TOKENIZER_TEMPLATE!r} for the "
                "tokenizer's chat_template"
            )

    def render(self, turns: Sequence[Turn]) -> Rendered:
        from fastchat.conversation import get_conv_template

        conv = get_conv_template(self.name)
        system, body = split_system(turns)
        if system is not None:
            if "{system_message}" not in conv.system_template:
                raise UsageError(
                    f"template {self.name!r} has a fixed system prompt, but the data has system turns: pick "
                    "another --template or remove the system turns"
                )
            conv.set_system_message(system)
        steps = []  # (prompt before the reply, prompt with it) per assistant turn
        try:
            for role, content in body:
                if role == "user":
                    conv.append_message(conv.roles[0], content)
                    continue
                conv.append_message(conv.roles[1], None)
                before = conv.get_prompt()
                conv.update_last_message(content)
                steps.append((before, conv.get_prompt()))
            text = conv.get_prompt()
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            # API-only templates (chatgpt, bard, gemini, ...) have no prompt format at all
            why = "it is an API-only template with no prompt format" if conv.sep_style is None else f"{err}"
            raise UsageError(
                f"--template {self.name!r} cannot render a training prompt ({why}); pick a template with a prompt "
                f"format: {TRAINABLE_EXAMPLES} (the one the model was trained with)"
            ) from None
        return Rendered(text, _spans(self.name, text, steps))


@dataclass(frozen=True)
class ChatTemplate:
    """The tokenizer's Jinja chat_template; its prompt already holds the special tokens it wants."""

    tokenizer: object
    name: str = TOKENIZER_TEMPLATE
    add_special_tokens: bool = False  # as apply_chat_template(tokenize=True) does

    def __post_init__(self):
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise UsageError(
                "--template tokenizer needs a tokenizer with a chat_template; this one has none. Use a "
                "FastChat template name instead (default vicuna_v1.1)"
            )

    def render(self, turns: Sequence[Turn]) -> Rendered:
        messages = [{"role": role, "content": content} for role, content in turns]
        text = self._apply(messages)
        steps = [
            (self._apply(messages[:index], generation_prompt=True), self._apply(messages[: index + 1]))
            for index, (role, _content) in enumerate(turns)
            if role == "assistant"
        ]
        return Rendered(text, _spans(self.name, text, steps))

    def _apply(self, messages: list[dict], generation_prompt: bool = False) -> str:
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except TemplateError as err:
            raise UsageError(f"the tokenizer's chat_template rejects a conversation: {err}") from None


def split_system(turns: Sequence[Turn]) -> tuple[str | None, Sequence[Turn]]:
    if turns and turns[0][0] == "system":
        return turns[0][1], turns[1:]
    return None, turns


def _spans(name: str, text: str, steps: list[tuple[str, str]]) -> tuple[tuple[int, int], ...]:
    for before, after in steps:
        if not (text.startswith(after) and after.startswith(before)):
            raise UsageError(
                f"template {name!r} renders a conversation differently once more turns follow, so the "
                "assistant replies cannot be located exactly; pick another --template"
            )
    return tuple((len(before), len(after)) for before, after in steps)
