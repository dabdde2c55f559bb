"""The README is a short front page whose two commands are the ones CI runs, and whose links lead somewhere."""

from __future__ import annotations

import re

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
LIMIT_BYTES = 15_000  # the front page; everything else lives in docs/


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line for block in blocks[:2] for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_is_a_short_front_page():
    assert len(README.encode("utf-8")) <= LIMIT_BYTES


def test_the_first_two_commands_install_and_run_the_demo_then_the_tests():
    install_and_run, test_command = readme_commands()[:2]
    assert "pip install torch==2.13.0" in install_and_run
    assert install_and_run.endswith("python -m llama_hw.launch")  # the demo: no arguments
    assert test_command == "python -m pytest -q"


def test_ci_runs_the_readme_test_command():
    install_and_run, test_command = readme_commands()[:2]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
    assert any("pip install -q torch==2.13.0" in line for line in ci)


def test_readme_links_lead_to_files():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local, "the README links into docs/"
    missing = [link for link in local if not (REPO / link).is_file()]
    assert not missing, f"README links to missing files: {missing}"
