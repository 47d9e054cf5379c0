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
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.test_event_consumer import drop_our_queues, events_amqp_base  # noqa: F401
from tests.vhosts import own_vhost

ROOT = Path(__file__).resolve().parents[2]
#: Variables that would configure a real KAT (or another Flower) and must not leak into the run.
CONFIG_PREFIXES = ("SCHEDULER_", "OCTOPOES_", "KATALOGUS_", "BYTES_", "QUEUE_URI", "FLOWER_", "CELERY_")


def clean_environment(run_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env["SCHEDULER_RUN_DIR"] = str(run_dir)
    env["FLOWER_PORT"] = "0"  # a free port: other runs may hold 5555
    return env


def wait_for_line(output: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, output.read_text(errors="replace"))
        if match:
            return match
        if process.poll() is not None:
            pytest.fail(f"the run exited early ({process.returncode}):\n{output.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"no {pattern!r} within {timeout}s:\n{output.read_text()}")


def flower_tasks(url: str, auth: tuple[str, str], name: str) -> dict[str, dict[str, object]]:
    answer = requests.get(f"{url}/api/tasks", params={"taskname": name, "limit": 50}, auth=auth, timeout=5)
    answer.raise_for_status()
    tasks: dict[str, dict[str, object]] = answer.json()
    return tasks


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


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
                "RUN_ARGS=--duration 25 --lines --organisations 2 --oois-per-org 60",
            ],
            cwd=tmp_path,
            env=clean_environment(tmp_path / "state"),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process, output
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_the_main_job_runs_the_whole_cycle_embedded_and_stops_cleanly(main_job) -> None:
    process, output = main_job
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
    assert [name for name, pid in pids.items() if group_alive(pid)] == [], "a child process outlived the run"


def run_command(*args: str) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "python"), "-m", "kat_scheduler", "run", "--lines", *args]


def task_rows(state: Path) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(state / "embedded" / "kat_scheduler.db") as db:
        return {task_id: status for task_id, status in db.execute("SELECT id, status FROM tasks")}


def test_sigterm_mid_work_stops_within_10s_and_the_next_run_finishes_what_was_left(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = clean_environment(state)
    output = tmp_path / "first.out"
    world = ("--organisations", "3", "--oois-per-org", "400", "--no-flower")
    with open(output, "wb") as sink:
        first = subprocess.Popen(run_command("--fresh", *world), cwd=tmp_path, env=env, stdout=sink, stderr=sink)
        try:
            wait_for_line(output, r"processes\s+(.*)", first, timeout=90)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                statuses = list(task_rows(state).values()) if (state / "embedded" / "kat_scheduler.db").exists() else []
                if statuses.count("completed") >= 20:
                    break
                time.sleep(0.2)
            signalled = time.monotonic()
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=15) == 0, output.read_text()
            assert time.monotonic() - signalled <= 10.5, "the run must stop within 10 s of SIGTERM"
        finally:
            if first.poll() is None:
                first.kill()
    text = output.read_text()
    pids = [int(pid) for pid in re.findall(r"=(\d+)", re.search(r"processes\s+(.*)", text).group(1))]  # type: ignore[union-attr]
    assert [pid for pid in pids if group_alive(pid)] == [], "a child process outlived the run"

    left = {task_id for task_id, status in task_rows(state).items() if status in ("queued", "dispatched", "running")}
    assert left, "the run was stopped mid-work, so some tasks should have been left queued"
    second_output = tmp_path / "second.out"
    with open(second_output, "wb") as sink:
        second = subprocess.Popen(run_command(*world), cwd=tmp_path, env=env, stdout=sink, stderr=sink)
        try:
            wait_for_line(second_output, r"processes\s+(.*)", second, timeout=90)
            deadline = time.monotonic() + 150
            unfinished = left
            while unfinished and time.monotonic() < deadline and second.poll() is None:
                after = task_rows(state)
                unfinished = {task_id for task_id in left if after[task_id] not in ("completed", "failed")}
                time.sleep(0.5)
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=15) == 0, second_output.read_text()
        finally:
            if second.poll() is None:
                second.kill()
    after = task_rows(state)
    lost = {task_id: after[task_id] for task_id in left if after[task_id] not in ("completed", "failed")}
    assert lost == {}, f"tasks left by the first run were not finished by the second: {lost}"


@pytest.fixture
def external_events_url(events_amqp_base: str) -> Iterator[str]:  # noqa: F811
    url = own_vhost(events_amqp_base, "kat_test_run")
    drop_our_queues(url)
    yield url
    drop_our_queues(url)


def test_with_kat_configured_the_run_uses_the_real_services_and_embeds_nothing(
    kat, world, external_events_url: str, private_postgres_uri: str, redis_url: str, tmp_path: Path
) -> None:
    from kat_scheduler.sim.bridge import EventBridge

    env = {
        **clean_environment(tmp_path / "state"),
        "OCTOPOES_API": kat.octopoes_url,
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
        result = subprocess.run(
            run_command("--duration", "20", "--no-flower"), cwd=tmp_path, env=env, stdout=sink, stderr=sink, timeout=120
        )
    text = output.read_text()
    assert result.returncode == 0, text
    assert "kat-scheduler run (external)" in text
    assert "embedded" not in text and "kat-sim" not in text, "an external run must not embed anything"
    completed = dict(re.findall(r"(boefje|normalizer)s: .*?completed ([\d,]+)", text))
    assert int(completed["boefje"].replace(",", "")) > 0 and int(completed["normalizer"].replace(",", "")) > 0, text
    assert sum(len(world.oois(org)) for org in world.organisation_ids) > objects_before, "the real graph did not grow"
    assert not (tmp_path / "state" / "embedded").exists()


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    env = clean_environment(tmp_path / "state")
    output = tmp_path / "first.out"
    with open(output, "wb") as sink:
        first = subprocess.Popen(
            run_command("--no-flower", "--organisations", "1", "--oois-per-org", "10"),
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=sink,
        )
        try:
            wait_for_line(output, r"processes\s+(.*)", first, timeout=90)
            second = subprocess.run(
                run_command("--duration", "5"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
            )
            assert second.returncode == 1
            assert f"pid {first.pid}" in second.stderr and "is in use" in second.stderr
            assert first.poll() is None, "the refused run must not disturb the first"
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=15) == 0


def test_ctrl_c_while_starting_stops_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    output = tmp_path / "run.out"
    big_world = ("--organisations", "10", "--oois-per-org", "3000", "--no-flower")  # slow to generate
    with open(output, "wb") as sink:
        run = subprocess.Popen(
            run_command(*big_world), cwd=tmp_path, env=clean_environment(tmp_path / "state"), stdout=sink, stderr=sink
        )
        try:
            time.sleep(3)
            interrupted = time.monotonic()
            run.send_signal(signal.SIGINT)
            assert run.wait(timeout=15) == 0, output.read_text()
            assert time.monotonic() - interrupted < 10
        finally:
            if run.poll() is None:
                run.kill()
    log = output.read_text()
    assert "stopped while starting" in log or "summary" in log, log
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "state")], capture_output=True, text=True).stdout
    assert leftovers.strip() == "", "the embedded redis-server outlived the run"
