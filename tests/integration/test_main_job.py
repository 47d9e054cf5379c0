"""The README's main-job command on a machine with nothing configured: ``make run``.

It starts everything embedded (a private Redis, SQLite, the simulated KAT), shows boefjes and
normalizers completing and the graph growing, lists the run's tasks in Flower, stops by itself
with ``--duration``, exits 0 and leaves no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import requests

from tests.conftest import vhost_name
from tests.events import drop_our_queues
from tests.runs import clean_environment, processes_of_run, run_command, task_rows, wait_for_line
from tests.vhosts import own_vhost
from tests.workers import ROOT, wait_for


def flower_tasks(url: str, auth: tuple[str, str], name: str) -> dict[str, dict[str, object]]:
    params: dict[str, str | int] = {"taskname": name, "limit": 50}
    answer = requests.get(f"{url}/api/tasks", params=params, auth=auth, timeout=5)
    answer.raise_for_status()
    tasks: dict[str, dict[str, object]] = answer.json()
    return tasks


@pytest.fixture
def main_job(tmp_path: Path):
    output = tmp_path / "run.out"
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [
                "make",
                "-s",
                "-C",
                str(ROOT),
                "run",
                # Long enough for boefjes and normalizers to complete and the graph to grow (the
                # run's first seconds do that for this world: its workers start on the first tick
                # while the run is still starting) and for Flower to list them, short enough not
                # to idle.
                "RUN_ARGS=--duration 8 --lines --organisations 2 --oois-per-org 60",
            ],
            cwd=tmp_path,
            env=clean_environment(tmp_path / "state"),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process, output, tmp_path / "state"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_the_main_job_runs_the_whole_cycle_embedded_and_stops_cleanly(main_job) -> None:
    process, output, state_dir = main_job
    flower = wait_for_line(output, r"flower\s+(http://\S+)\s+user (\S+)\s+password (\S+)", process, timeout=90)
    url, auth = flower.group(1), (flower.group(2), flower.group(3))
    pids = {
        name: int(pid)
        for name, pid in re.findall(r"(\S+)=(\d+)", wait_for_line(output, r"processes\s+(.*)", process, 30).group(1))
    }
    assert {"redis", "kat-sim", "scheduler", "boefjes", "normalizers", "listener", "beat", "flower"} <= set(pids)

    # Flower lists the run's boefje tasks, with readable kwargs and no secrets.
    deadline = time.monotonic() + 20
    boefje_tasks: dict[str, dict[str, object]] = {}
    while not boefje_tasks and time.monotonic() < deadline:
        boefje_tasks = flower_tasks(url, auth, "kat.boefje.run")
        time.sleep(0.5)
    assert boefje_tasks, "Flower lists no kat.boefje.run task"
    some = next(iter(boefje_tasks.values()))
    assert "organisation" in str(some["kwargs"]) and "boefje_id" in str(some["kwargs"])
    assert "password" not in str(some).lower()
    assert requests.get(f"{url}/api/tasks", timeout=5).status_code == 401, "Flower must ask for credentials"

    assert process.wait(timeout=60) == 0, output.read_text()
    text = output.read_text()
    completed = {
        kind: int(n.replace(",", "")) for kind, n in re.findall(r"(boefje|normalizer)s: .*?completed ([\d,]+)", text)
    }
    assert completed.get("boefje", 0) > 0 and completed.get("normalizer", 0) > 0, text
    grown = re.search(r"objects: ([\d,]+) -> ([\d,]+)", text)
    assert grown and int(grown.group(2).replace(",", "")) > int(grown.group(1).replace(",", "")), text
    assert "processes: all stopped cleanly" in text, text
    stopped = re.search(r"stopped in ([\d.]+)s", text)
    assert stopped and float(stopped.group(1)) <= 10.0
    assert processes_of_run(state_dir) == [], "a child process outlived the run"


def messages_kept_in(state: Path) -> set[str]:
    """Task ids of the messages the embedded Redis kept on disk (queued, or unacked and due back)."""
    import json

    import redis

    from kat_scheduler.run.embedded import free_port, redis_server_argv, redis_server_binary, wait_for_redis

    port = free_port()
    server = subprocess.Popen(
        redis_server_argv(redis_server_binary(), port, state / "embedded"), stdout=subprocess.DEVNULL
    )
    try:
        wait_for_redis(f"redis://127.0.0.1:{port}/0", server)
        client = redis.Redis(port=port)
        ids: set[str] = set()
        for key in cast(list[bytes], client.keys("*")):
            if key.startswith((b"boefjes", b"normalizers")) and client.type(key) == b"list":
                ids.update(json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1))
        for raw in client.hvals("unacked"):
            ids.add(json.loads(raw)[0]["headers"]["id"])
        client.close()
        return ids
    finally:
        server.terminate()
        server.wait(10)


def test_sigterm_mid_work_stops_within_10s_finishing_running_tasks_and_keeping_queued_ones(tmp_path: Path) -> None:
    state = tmp_path / "state"
    output = tmp_path / "run.out"
    world = ("--organisations", "3", "--oois-per-org", "400", "--no-flower")
    with open(output, "wb") as sink:
        run = subprocess.Popen(
            run_command(*world), cwd=tmp_path, env=clean_environment(state), stdout=sink, stderr=sink
        )
        try:
            wait_for_line(output, r"started in", run, timeout=90)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if list(task_rows(state).values()).count("completed") >= 20:
                    break
                time.sleep(0.2)
            signalled = time.monotonic()
            run.send_signal(signal.SIGTERM)
            assert run.wait(timeout=15) == 0, output.read_text()
            assert time.monotonic() - signalled <= 10.5, "the run must stop within 10 s of SIGTERM"
        finally:
            if run.poll() is None:
                run.kill()
    assert processes_of_run(state) == [], "a child process outlived the run"

    rows = task_rows(state)
    running = {task_id for task_id, status in rows.items() if status == "running"}
    assert running == set(), "a warm shutdown lets the workers finish the task at hand"
    for worker in ("boefjes", "normalizers"):
        assert "WorkerLostError" not in (state / "logs" / f"{worker}.log").read_text(), f"{worker}: a task was killed"
    # queued, or received by a worker that stopped before starting it (its message goes back)
    waiting = {task_id for task_id, status in rows.items() if status in ("queued", "dispatched")}
    assert waiting, "the run was stopped mid-work, so some tasks should have been left queued"
    missing = {task_id.replace("-", "") for task_id in waiting} - {m.replace("-", "") for m in messages_kept_in(state)}
    assert missing == set(), f"{len(missing)} queued tasks lost their message"


@pytest.fixture
def external_events_url(events_amqp_base: str) -> Iterator[str]:
    url = own_vhost(events_amqp_base, vhost_name("run"))
    drop_our_queues(url)
    yield url
    drop_our_queues(url)


def test_with_kat_configured_the_run_uses_the_real_services_and_embeds_nothing(
    kat, world, external_events_url: str, private_postgres_uri: str, redis_url: str, tmp_path: Path
) -> None:
    from kat_scheduler.sim.bridge import EventBridge

    env = {
        **clean_environment(tmp_path / "state"),
        "OCTOPOES_API": kat.octopoes_url.replace("http://", "http://kat:s3cret-in-url@"),
        "KATALOGUS_API": kat.katalogus_url,
        "BYTES_API": kat.bytes_url,
        "QUEUE_URI": external_events_url,
        "SCHEDULER_DB_URI": private_postgres_uri,
        "SCHEDULER_BROKER_URL": redis_url,
        "SCHEDULER_RUNNER": "simulated",
        "SCHEDULER_PLAN_INTERVAL": "5",
    }
    objects_before = sum(len(world.oois(org)) for org in world.organisation_ids)
    output = tmp_path / "external.out"
    with EventBridge(external_events_url) as bridge, open(output, "wb") as sink:
        world.add_listener(bridge)
        # Stopped (SIGTERM, as a deploy does) once its own status line shows boefjes and normalizers
        # completed: the summary counts at least those; --duration only bounds a run that never does.
        run = subprocess.Popen(
            run_command("--duration", "90", "--no-flower"), cwd=tmp_path, env=env, stdout=sink, stderr=sink
        )
        try:
            wait_for_line(output, r"boefjes\[[^]]*completed=[1-9][^]]*\]\s+normalizers\[[^]]*completed=[1-9]", run, 100)
            run.send_signal(signal.SIGTERM)
            returncode = run.wait(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    text = output.read_text()
    assert returncode == 0, text
    assert "kat-scheduler run (external)" in text
    assert "s3cret-in-url" not in text and "http://kat:***@127.0.0.1" in text, "the banner shows a password"
    assert "embedded" not in text and "kat-sim" not in text, "an external run must not embed anything"
    completed = dict(re.findall(r"(boefje|normalizer)s: .*?completed ([\d,]+)", text))
    assert int(completed["boefje"].replace(",", "")) > 0 and int(completed["normalizer"].replace(",", "")) > 0, text
    assert sum(len(world.oois(org)) for org in world.organisation_ids) > objects_before, "the real graph did not grow"
    assert not (tmp_path / "state" / "embedded").exists()


def test_ctrl_c_while_starting_stops_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    output = tmp_path / "run.out"
    big_world = ("--organisations", "10", "--oois-per-org", "3000", "--no-flower")  # slow to generate
    with open(output, "wb") as sink:
        run = subprocess.Popen(
            run_command(*big_world), cwd=tmp_path, env=clean_environment(tmp_path / "state"), stdout=sink, stderr=sink
        )
        try:
            # Interrupt once the run's supervisor has started a child (its log file exists: the
            # embedded Redis or the world), long before the big world answers: the run is still
            # starting when the signal arrives, and its own handlers are installed by then.
            logs = tmp_path / "state" / "logs"
            assert wait_for(lambda: logs.is_dir() and any(logs.glob("*.log")), timeout=30), output.read_text()
            assert "started in" not in output.read_text(), "the run started before it could be interrupted"
            interrupted = time.monotonic()
            run.send_signal(signal.SIGINT)
            assert run.wait(timeout=15) == 0, output.read_text()
            assert time.monotonic() - interrupted < 10
        finally:
            if run.poll() is None:
                run.kill()
    log = output.read_text()
    assert "stopped while starting" in log, log
    assert "started in" not in log, log
    assert processes_of_run(tmp_path / "state") == [], "a process of the run outlived it"


@pytest.fixture
def small_run(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    """Starts a run with a tiny world; whatever a test leaves running is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        output = tmp_path / "run.out"
        with open(output, "wb") as sink:
            run = subprocess.Popen(
                run_command("--no-flower", "--organisations", "1", "--oois-per-org", "20", *args),
                cwd=tmp_path,
                env=env or clean_environment(tmp_path / "state"),
                stdout=sink,
                stderr=sink,
            )
        started.append(run)
        wait_for_line(output, r"started in", run, timeout=90)
        return run, output

    yield start
    for run in started:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
            try:
                run.wait(timeout=15)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()


def describe(pids: list[int]) -> list[str]:
    """``pid: command line`` of each pid still alive (for a failure's message)."""
    out = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        out.append(f"{pid}: {command[:200]}")
    return out


def wait_until_gone(run_dir: Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_of_run(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_a_second_run_on_the_same_folder_is_refused_and_a_closed_terminal_sighup_stops_the_first_cleanly(
    tmp_path: Path, small_run
) -> None:
    # One run on the folder for both: the second run's refusal must leave it undisturbed, and
    # closing its terminal then stops it as cleanly as a run nobody disturbed.
    run, output = small_run()
    second = subprocess.run(
        run_command("--duration", "5"),
        cwd=tmp_path,
        env=clean_environment(tmp_path / "state"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert f"pid {run.pid}" in second.stderr and "is in use" in second.stderr
    assert run.poll() is None, "the refused run must not disturb the first"

    run.send_signal(signal.SIGHUP)
    assert run.wait(timeout=15) == 0, output.read_text()
    assert processes_of_run(tmp_path / "state") == []


def test_a_supervisor_killed_with_sigkill_leaves_no_process_running(tmp_path: Path, small_run) -> None:
    run, _ = small_run()
    assert len(processes_of_run(tmp_path / "state")) > 1
    run.kill()
    run.wait()
    left = wait_until_gone(tmp_path / "state", timeout=20)
    assert left == [], f"children outlived a killed supervisor: {describe(left)}"


class Blackhole:
    """A TCP server that accepts connections and never answers: a hung KAT service."""

    def __init__(self) -> None:
        import socket
        import threading

        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.server.close()


def test_a_hung_kat_service_delays_neither_the_view_nor_the_stop(
    tmp_path: Path, redis_url: str, second_redis_url: str, small_run
) -> None:
    hung = Blackhole()
    try:
        url = f"http://127.0.0.1:{hung.port}"
        env = {
            **clean_environment(tmp_path / "state"),
            "OCTOPOES_API": url,
            "KATALOGUS_API": url,
            "BYTES_API": url,
            "QUEUE_URI": second_redis_url,
            "SCHEDULER_BROKER_URL": redis_url,
            "SCHEDULER_DB_URI": f"sqlite:///{tmp_path / 'external.db'}",
        }
        run, output = small_run(env=env)
        wait_for_line(output, r"\nt=\d+s", run, timeout=10)  # a status line despite the hung service
        interrupted = time.monotonic()
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=20) == 0, output.read_text()
        assert time.monotonic() - interrupted <= 10.5, "Ctrl-C must stop the run within 10 s"
        assert wait_until_gone(tmp_path / "state", timeout=5) == []
    finally:
        hung.close()


def test_invalid_settings_stop_the_run_before_anything_starts(tmp_path: Path) -> None:
    env = {**clean_environment(tmp_path / "state"), "SCHEDULER_RUN_BOEFJE_CONCURRENCY": "0"}
    result = subprocess.run(run_command(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SCHEDULER_RUN_BOEFJE_CONCURRENCY" in result.stderr


def test_a_flower_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        env = {**clean_environment(tmp_path / "state"), "FLOWER_PORT": str(taken.getsockname()[1])}
        result = subprocess.run(
            [str(ROOT / ".venv/bin/python"), "-m", "kat_scheduler", "run", "--lines"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "FLOWER_PORT" in result.stderr and "in use" in result.stderr
    assert not (tmp_path / "state" / "embedded" / "appendonly.aof").exists(), "nothing should have started"
