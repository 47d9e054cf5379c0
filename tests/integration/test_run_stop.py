"""``kat-scheduler run`` stopped while it is busy: every child stops by itself, nothing is killed.

Every child runs (beat, listener and API as producers, the three workers, Flower, the embedded
Redis and simulated KAT), the workers are mid-work, and SIGTERM arrives: the run exits 0 within
10 s, its summary says every process stopped cleanly, and no process outlives it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from tests.runs import (
    clean_environment,
    processes_of_run,
    run_command,
    task_rows,
    wait_for_line,
)
from tests.workers import wait_for


def test_a_busy_run_with_every_child_stops_within_10s_without_killing_any(tmp_path: Path) -> None:
    state = tmp_path / "state"
    output = tmp_path / "run.out"
    world = ("--organisations", "3", "--oois-per-org", "400")  # minutes of work: busy when stopped
    with open(output, "wb") as sink:
        run = subprocess.Popen(
            run_command("--duration", "300", *world),
            cwd=tmp_path,
            env=clean_environment(state),
            stdout=sink,
            stderr=sink,
        )
        try:
            wait_for_line(output, r"started in", run, timeout=120)
            names = set(re.findall(r"(\S+)=\d+", wait_for_line(output, r"processes\s+(.*)", run, 10).group(1)))
            assert {"beat", "listener", "api", "scheduler", "boefjes", "normalizers", "flower"} <= names

            def busy() -> bool:  # tasks finish, and more wait: the workers are mid-work
                statuses = list(task_rows(state).values())
                return statuses.count("completed") >= 20 and statuses.count("queued") > 0

            assert wait_for(busy, timeout=90, interval=0.2), output.read_text()
            signalled = time.monotonic()
            run.send_signal(signal.SIGTERM)
            assert run.wait(timeout=20) == 0, output.read_text()
            took = time.monotonic() - signalled
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    text = output.read_text()
    assert took <= 10.5, f"the run took {took:.1f}s to stop:\n{text}"
    assert re.search(r"processes: all stopped cleanly \(the slowest, \S+, in [\d.]+s\)", text), text
    assert "kill" not in text.lower(), text  # the summary, the warning on stderr, the supervisor's log
    assert processes_of_run(state) == [], "a child process outlived the run"
