"""The API served by several processes (``SCHEDULER_API_WORKERS``, uvicorn's worker processes on
one port): each process builds its application from the environment, concurrent runners pushing
and popping through all of them never share a task, and a stop ends every process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from itertools import chain
from pathlib import Path

import requests
from sqlalchemy import func, select

from kat_scheduler.run.embedded import free_port
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.tables import TaskRow
from tests.workers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def workers_of(pid: int) -> list[int]:
    """The uvicorn worker processes of the server ``pid`` (children that multiprocessing spawned,
    not its resource tracker)."""
    try:
        found = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    spawned = []
    for child in found:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                spawned.append(child)
        except OSError:
            continue
    return spawned


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def in_parallel(count: int, work: Callable[[requests.Session, list[str]], None]) -> list[list[str]]:
    """``work(session, mine)`` on ``count`` threads, each with a session and a list of its own."""
    found: list[list[str]] = [[] for _ in range(count)]
    errors: list[BaseException] = []

    def run(mine: list[str]) -> None:
        with requests.Session() as http:
            try:
                work(http, mine)
            except BaseException as exc:  # raised in the test below
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(mine,)) for mine in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return found


def test_two_api_worker_processes_share_the_port_and_never_hand_out_a_task_twice(private_postgres_uri, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SCHEDULER_DB_URI": private_postgres_uri,
        "SCHEDULER_API_WORKERS": "1",  # the command's --workers wins
        "SCHEDULER_PULL_SCHEDULERS": "report",
        "SCHEDULER_LOG_LEVEL": "WARNING",
    }
    command = ["-m", "kat_scheduler", "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, start_new_session=True)
    engine = make_engine(private_postgres_uri, pool_size=1)
    try:

        def answering() -> bool:
            try:
                return requests.get(f"{url}/health", timeout=2).ok and len(workers_of(server.pid)) == 2
            except requests.ConnectionError:
                return server.poll() is not None

        assert wait_for(answering, timeout=60, interval=0.2), "the API did not start two worker processes"
        assert server.poll() is None, "the API exited"
        workers = workers_of(server.pid)

        def push(http: requests.Session, mine: list[str]) -> None:
            for _ in range(25):  # Rocky's report push (rocky/reports/runner), through any worker
                org = "aa"
                body = {"organisation": org, "data": {"organisation_id": org, "report_recipe_id": str(uuid.uuid4())}}
                answer = http.post(f"{url}/schedulers/report/push", json=body, timeout=30)
                assert answer.status_code == 201, answer.text
                mine.append(answer.json()["id"])

        def pop(http: requests.Session, mine: list[str]) -> None:
            while True:
                answer = http.post(f"{url}/schedulers/report/pop", params={"limit": 3}, timeout=30)
                assert answer.status_code == 200, answer.text
                results = answer.json()["results"]
                if not results:
                    return
                mine.extend(task["id"] for task in results)

        pushed = list(chain.from_iterable(in_parallel(4, push)))
        popped = in_parallel(4, pop)

        assert len(pushed) == len(set(pushed)) == 100
        taken = list(chain.from_iterable(popped))
        assert sorted(taken) == sorted(pushed), "every pushed task popped exactly once"
        with engine.connect() as conn:
            statuses = dict(conn.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status)).all())
        assert {status.value: count for status, count in statuses.items()} == {"dispatched": 100}
        assert workers_of(server.pid) == workers, "a worker process died"
    finally:
        workers = workers_of(server.pid)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            raise
        engine.dispose()
    assert code == 0
    assert wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10), "a worker outlived the API"
