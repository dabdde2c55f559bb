"""How the conversation reaches the user: FastChat's own ChatIO classes, plus a one-shot one for scripts."""

from __future__ import annotations

from typing import TextIO

from fastchat.serve.cli import RichChatIO, SimpleChatIO
from fastchat.serve.inference import ChatIO

STYLES = ("simple", "rich")
# FastChat's `raw` template (plain completion) has empty role names, which its ChatIO shows as a bare
# ": " prompt; these stand in for them.
FALLBACK_ROLES = ("USER", "MODEL")


class NamedRoles(ChatIO):
    """Shows FALLBACK_ROLES where the template's role name is empty; everything else is FastChat's."""

    def __init__(self, inner: ChatIO):
        self.inner = inner

    def prompt_for_input(self, role: str) -> str:
        return self.inner.prompt_for_input(role or FALLBACK_ROLES[0])

    def prompt_for_output(self, role: str):
        return self.inner.prompt_for_output(role or FALLBACK_ROLES[1])

    def stream_output(self, output_stream):
        return self.inner.stream_output(output_stream)

    def print_output(self, text: str):
        return self.inner.print_output(text)


def interactive_chatio(style: str) -> ChatIO:
    if style == "simple":
        return NamedRoles(SimpleChatIO(multiline=False))
    if style == "rich":
        return NamedRoles(RichChatIO(multiline=False, mouse=False))
    raise ValueError(f"unknown style {style!r}")


class OneShotChatIO(ChatIO):
    """Asks one question, streams only the reply to `out`, then ends FastChat's loop with `!!exit`."""

    def __init__(self, prompt: str, out: TextIO):
        self.pending = [prompt]
        self.out = out

    def prompt_for_input(self, role: str) -> str:
        return self.pending.pop() if self.pending else "!!exit"

    def prompt_for_output(self, role: str):
        pass

    def stream_output(self, output_stream):
        shown = text = ""
        for outputs in output_stream:
            text = outputs["text"].lstrip()
            # Print only up to the last whitespace: the next token may still change an unfinished word.
            complete = text[: max(text.rfind(" "), text.rfind("\n")) + 1]
            if len(complete) > len(shown) and complete.startswith(shown):
                self.write(complete[len(shown):])
                shown = complete
        self.write(text[len(shown):] + "\n")
        return text

    def print_output(self, text: str):
        pass

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
