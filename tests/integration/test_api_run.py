"""``kat-scheduler run`` serves the HTTP API: its banner names it, and Flower and the API agree on
the run's tasks (the Celery task id is the task's id)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.integration.test_main_job import clean_environment, flower_tasks, processes_of_run, wait_for_line

ROOT = Path(__file__).resolve().parents[2]


def test_the_run_serves_the_api_and_it_agrees_with_flower_on_the_runs_tasks(tmp_path: Path) -> None:
    env = {**clean_environment(tmp_path / "state"), "SCHEDULER_API_PORT": "0"}
    output = tmp_path / "run.out"
    argv = [sys.executable, "-m", "kat_scheduler", "run", "--lines", "--duration", "30"]
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [*argv, "--organisations", "2", "--oois-per-org", "60"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            api_url = wait_for_line(output, r"api\s+(http://\S+)\s+\(OpenAPI page: (\S+)\)", process, 90).group(1)
            flower = wait_for_line(output, r"flower\s+(http://\S+)\s+user (\S+)\s+password (\S+)", process, 30)
            flower_url, auth = flower.group(1), (flower.group(2), flower.group(3))
            assert requests.get(f"{api_url}/docs", timeout=5).status_code == 200

            deadline = time.monotonic() + 30
            seen: dict[str, dict[str, object]] = {}
            while len(seen) < 3 and time.monotonic() < deadline:
                seen = flower_tasks(flower_url, auth, "kat.boefje.run")
                time.sleep(0.5)
            assert seen, "Flower lists no kat.boefje.run task"

            for task_id, in_flower in list(seen.items())[:5]:
                answer = requests.get(f"{api_url}/tasks/{task_id}", timeout=5)
                assert answer.status_code == 200, f"the API does not know Flower's task {task_id}"
                task = answer.json()
                assert task["type"] == "boefje" and task["scheduler_id"] == "boefje"
                assert task["organisation"] in str(in_flower["kwargs"])
                assert task["data"]["boefje"]["id"] in str(in_flower["kwargs"])
            listed = requests.get(f"{api_url}/tasks", params={"scheduler_id": "boefje", "limit": "0"}, timeout=5)
            assert listed.json()["count"] >= len(seen)
            schedulers = {s["id"]: s for s in requests.get(f"{api_url}/schedulers", timeout=5).json()}
            assert schedulers["boefje"]["last_activity"] is not None

            assert process.wait(timeout=90) == 0, output.read_text()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    text = output.read_text()
    assert "processes: all stopped cleanly" in text, text
    assert processes_of_run(tmp_path / "state") == [], "a child process outlived the run"
