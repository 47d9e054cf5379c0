"""``kat-scheduler run`` as a real process for integration tests: its command line, a clean
environment (nothing of a real KAT leaks in), waiting on its output, and what it left behind."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.workers import ROOT

#: Variables that would configure a real KAT (or another Flower) and must not leak into the run.
CONFIG_PREFIXES = ("SCHEDULER_", "OCTOPOES_", "KATALOGUS_", "BYTES_", "QUEUE_URI", "FLOWER_", "CELERY_")


def clean_environment(run_dir: Path) -> dict[str, str]:
    """This process's environment without any of :data:`CONFIG_PREFIXES`, the run's state in
    ``run_dir`` and free ports for Flower and the API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env["SCHEDULER_RUN_DIR"] = str(run_dir)
    env["FLOWER_PORT"] = "0"  # a free port: other runs may hold 5555
    env["SCHEDULER_API_PORT"] = "0"  # a free port: other runs may hold 8004
    return env


def run_command(*args: str) -> list[str]:
    """``kat-scheduler run --lines`` with ``args``, by the venv's Python."""
    return [str(ROOT / ".venv" / "bin" / "python"), "-m", "kat_scheduler", "run", "--lines", *args]


def wait_for_line(output: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float) -> re.Match[str]:
    """The first match of ``pattern`` in ``output``; fails the test when ``process`` exits first
    or nothing matches within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, output.read_text(errors="replace"))
        if match:
            return match
        if process.poll() is not None:
            pytest.fail(f"the run exited early ({process.returncode}):\n{output.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"no {pattern!r} within {timeout}s:\n{output.read_text()}")


def processes_of_run(run_dir: Path) -> list[int]:
    """Pids of live processes started for the run in ``run_dir`` (children inherit its
    SCHEDULER_RUN_DIR), so a pid reused by an unrelated process is never mistaken for one."""
    marker = f"SCHEDULER_RUN_DIR={run_dir}".encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state != "Z":
            found.append(int(proc.name))
    return found


def task_rows(state: Path) -> dict[str, str]:
    """Task id -> status in the embedded SQLite database of the run whose state is in ``state``."""
    with sqlite3.connect(state / "embedded" / "kat_scheduler.db") as db:
        return {task_id: status for task_id, status in db.execute("SELECT id, status FROM tasks")}
