"""`python -m llama_hw.chat` as a user runs it: in a terminal (FastChat's loop and commands) and one-shot."""

from __future__ import annotations

import json
import subprocess

import pytest

from chat_support import BASE_CONTINUATION, PROMPT, chat_command, chat_env
from conftest import REPO

pexpect = pytest.importorskip("pexpect")

GREEDY = ("--template", "raw", "--temperature", "0", "--max-new-tokens", "40", "--device", "cpu")


def spawn_chat(model_dir, *args: str):
    command = chat_command("--model-path", str(model_dir), *GREEDY, *args)
    return pexpect.spawn(command[0], command[1:], env=chat_env(), cwd=str(REPO), encoding="utf-8",
                         timeout=90, dimensions=(40, 200))


def say(session, text: str, until: str = "USER: ") -> str:
    """Type one line and return what the program printed until it asks again."""
    session.sendline(text)
    session.expect_exact(until)
    return session.before


def saved_messages(path) -> list[list[str]]:
    return json.loads(path.read_text())["messages"]


def test_terminal_chat_streams_keeps_history_resets_saves_loads_and_exits(stories260k_dir, tmp_path):
    session = spawn_chat(stories260k_dir)
    session.expect_exact("USER: ")
    assert "template raw (--template)" in session.before  # the banner names what was chosen

    first = say(session, PROMPT)
    assert "MODEL: " in first and BASE_CONTINUATION in first
    say(session, f"!!save {tmp_path / 'one_turn.json'}")
    say(session, PROMPT)  # the second turn sees the first: the prompt is now three parts long
    say(session, f"!!save {tmp_path / 'two_turns.json'}")
    assert "resetting..." in say(session, "!!reset")
    third = say(session, PROMPT)
    say(session, f"!!save {tmp_path / 'after_reset.json'}")
    loaded = say(session, f"!!load {tmp_path / 'one_turn.json'}")
    say(session, f"!!save {tmp_path / 'reloaded.json'}")
    session.sendline("!!exit")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0, session.before

    one_turn = saved_messages(tmp_path / "one_turn.json")
    assert [role for role, _ in one_turn] == ["", ""] and one_turn[0][1] == PROMPT
    reply = one_turn[1][1]
    assert BASE_CONTINUATION in reply
    two_turns = saved_messages(tmp_path / "two_turns.json")
    assert two_turns[:2] == one_turn and two_turns[2][1] == PROMPT
    assert two_turns[3][1] != reply  # with history the same words continue a different text
    # After !!reset the history is gone: one turn again, and the reply is the first one, word for word.
    assert saved_messages(tmp_path / "after_reset.json") == one_turn
    assert BASE_CONTINUATION in third
    assert "loading..." in loaded and BASE_CONTINUATION in loaded  # !!load replays the conversation
    assert saved_messages(tmp_path / "reloaded.json") == one_turn


def test_rich_style_chats_and_exits(stories260k_dir):
    session = spawn_chat(stories260k_dir, "--style", "rich")
    session.expect_exact("USER:")
    session.sendline(PROMPT)
    session.expect_exact("Lily")
    session.expect_exact("USER:")
    session.sendline("!!exit")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0


def test_one_shot_prompt_prints_only_the_reply(stories260k_dir):
    result = subprocess.run(
        chat_command("--model-path", str(stories260k_dir), *GREEDY, "--prompt", PROMPT),
        capture_output=True, text=True, env=chat_env(), cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f", {BASE_CONTINUATION}.")
    # Scriptable: no banner, role names or FastChat's "exit..." around the reply.
    assert "llama_hw chat" not in result.stdout and "USER" not in result.stdout and "exit..." not in result.stdout
