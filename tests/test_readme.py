"""The README's commands are the ones CI runs."""

from __future__ import annotations

import re

from conftest import REPO


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [line for block in blocks[:2] for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
    install_and_run, test_command = readme_commands()[:2]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
    assert "pip install torch==2.13.0" in install_and_run
    assert any("pip install -q torch==2.13.0" in line for line in ci)
