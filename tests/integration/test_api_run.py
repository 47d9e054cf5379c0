"""``kat-scheduler run`` serves the HTTP API: its banner names it, and Flower and the API agree on
the run's tasks (the Celery task id is the task's id, and the outcome a worker returned to Celery
is the status the API reports)."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.runs import clean_environment, processes_of_run, wait_for_line
from tests.workers import wait_for

ROOT = Path(__file__).resolve().parents[2]
#: The Celery tasks that run a scheduler's task (the task id is the row's id).
RUN_TASKS = {"kat.boefje.run": "boefje", "kat.normalizer.run": "normalizer"}


def celery_outcomes(flower_url: str, auth: tuple[str, str]) -> dict[str, tuple[str, str]]:
    """Flower's (Celery's task events) account of the run's finished tasks: id → (scheduler, the
    outcome the worker returned: ``completed`` or ``failed``). A task skipped as a redelivery of a
    finished one is left out (its row is another delivery's)."""
    found: dict[str, tuple[str, str]] = {}
    for name, scheduler in RUN_TASKS.items():
        params: dict[str, str | int] = {"taskname": name, "state": "SUCCESS", "limit": 1000}
        answer = requests.get(f"{flower_url}/api/tasks", params=params, auth=auth, timeout=10)
        answer.raise_for_status()
        for task_id, task in answer.json().items():
            # Flower keeps the task-succeeded event's result, the repr of the dict the task returned.
            outcome = ast.literal_eval(task["result"])["outcome"]
            if outcome in ("completed", "failed"):
                found[task_id] = (scheduler, outcome)
    return found


def api_statuses(api_url: str, ids: list[str]) -> dict[str, tuple[str, str]]:
    """The API's listing of ``ids`` (``POST /tasks`` with an ``id in`` filter): id → (scheduler, status)."""
    body = {"filters": [{"column": "id", "operator": "in", "value": ids}]}
    answer = requests.post(f"{api_url}/tasks", params={"limit": 500}, json=body, timeout=10)
    answer.raise_for_status()
    page = answer.json()
    assert page["count"] == len(page["results"]), page["count"]
    return {task["id"]: (task["scheduler_id"], task["status"]) for task in page["results"]}


def test_the_run_serves_the_api_and_it_agrees_with_flower_on_the_runs_tasks(tmp_path: Path) -> None:
    env = clean_environment(tmp_path / "state")
    output = tmp_path / "run.out"
    # The run is stopped with SIGTERM once the checks are done (the duration only bounds it).
    argv = [sys.executable, "-m", "kat_scheduler", "run", "--lines", "--duration", "300"]
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

            # Celery's side: the tasks the workers finished, with what they returned.
            outcomes: dict[str, tuple[str, str]] = {}

            def enough_finished() -> bool:
                outcomes.update(celery_outcomes(flower_url, auth))
                return len(outcomes) >= 10 and any(s == "normalizer" for s, _ in outcomes.values())

            assert wait_for(enough_finished, timeout=40, interval=0.5), f"Flower saw only {outcomes}"
            ids = sorted(outcomes)[:500]
            # The API lists every one of them, as the same scheduler's task, in the status its
            # worker returned: a row is finished before the Celery task returns.
            assert api_statuses(api_url, ids) == {task_id: outcomes[task_id] for task_id in ids}

            # And the other way: what the API says the workers finished, Flower reports as
            # finished the same way (Flower may lag behind the events a moment).
            finished: dict[str, tuple[str, str]] = {}
            for scheduler in RUN_TASKS.values():
                for status in ("completed", "failed"):
                    params = {"scheduler_id": scheduler, "status": status, "limit": 100}
                    page = requests.get(f"{api_url}/tasks", params=params, timeout=10).json()
                    finished.update({t["id"]: (scheduler, status) for t in page["results"]})
            assert finished, "the API lists no finished task"

            def flower_caught_up() -> bool:
                outcomes.update(celery_outcomes(flower_url, auth))
                return finished.keys() <= outcomes.keys()

            assert wait_for(flower_caught_up, timeout=20, interval=0.5), (
                f"finished in the API, unknown to Flower: {sorted(finished.keys() - outcomes.keys())[:5]}"
            )
            assert {task_id: outcomes[task_id] for task_id in finished} == finished

            schedulers = {s["id"]: s for s in requests.get(f"{api_url}/schedulers", timeout=5).json()}
            assert schedulers["boefje"]["last_activity"] is not None

            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, output.read_text()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    text = output.read_text()
    assert "processes: all stopped cleanly" in text, text
    assert processes_of_run(tmp_path / "state") == [], "a child process outlived the run"
