"""Every command quoted in the README and docs/ exists and its arguments parse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.commands import command_problems, split_shell

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OURS = ("kat-scheduler", "celery", "make")


def quoted_commands(document: Path) -> list[tuple[int, list[str]]]:
    """Commands in ```sh blocks and in `inline code` that start with one of our programs."""
    text = document.read_text()
    found: list[tuple[int, list[str]]] = []
    for block in re.finditer(r"```(?:sh|bash|console)\n(.*?)```", text, flags=re.S):
        first_line = text.count("\n", 0, block.start()) + 2
        lines = block.group(1).splitlines()
        for offset, line in enumerate(lines):
            if offset > 0 and lines[offset - 1].endswith("\\"):
                continue  # part of the command above, joined there
            following = offset
            while lines[following].endswith("\\") and following + 1 < len(lines):
                following += 1
                line = line[:-1] + " " + lines[following]
            line = line.removeprefix("$ ")
            for command in split_shell(line.replace("…", "x")):
                if Path(command[0]).name in OURS:  # `.venv/bin/kat-scheduler` too
                    found.append((first_line + offset, command))
    for inline in re.finditer(r"`((?:kat-scheduler|celery -A kat_scheduler) [^`]*)`", text):
        if any(mark in inline.group(1) for mark in ("…", "<", "[")):
            continue  # elided arguments: shown as a pattern, not a command
        line_no = text.count("\n", 0, inline.start()) + 1
        for command in split_shell(inline.group(1)):
            found.append((line_no, command))
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_documented_command_exists_and_parses(document: Path) -> None:
    problems = [
        f"{document.name}:{line}: {problem}"
        for line, command in quoted_commands(document)
        for problem in command_problems(command)
    ]
    assert problems == []


def test_the_readme_quotes_the_main_job_and_the_test_command() -> None:
    commands = [" ".join(c) for _, c in quoted_commands(ROOT / "README.md")]
    assert "make run" in commands and "make test" in commands
