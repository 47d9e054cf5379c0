"""The production process set: the Procfile and docker-compose.yml name only commands that exist,
and ``honcho start`` brings the whole set up against real services and stops it cleanly."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kat_scheduler.queues import Queue
from kat_scheduler.run.embedded import free_port
from tests.commands import command_problems

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "Procfile"
COMPOSE = ROOT / "docker-compose.yml"


def procfile() -> dict[str, str]:
    entries = {}
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_the_procfile_names_only_commands_that_exist() -> None:
    entries = procfile()
    assert {"beat", "scheduler", "boefjes", "normalizers", "listener", "flower", "api"} <= set(entries)
    for name, command in entries.items():
        assert command_problems(shlex.split(command)) == [], name


def test_the_compose_file_names_only_commands_that_exist_and_guards_flower() -> None:
    services = compose()["services"]
    ours = {name: s for name, s in services.items() if s.get("image") == "kat-scheduler:local"}
    assert set(ours) == {
        "migrate",
        "beat",
        "scheduler-worker",
        "boefje-worker",
        "normalizer-worker",
        "listener",
        "flower",
        "api",
    }
    for name, service in ours.items():
        assert command_problems(service["command"]) == [], name
        health = service.get("healthcheck", {}).get("test")
        if health and health[0] == "CMD" and health[1] in ("kat-scheduler", "celery"):
            assert command_problems(health[1:]) == [], f"{name}'s health check"
        if name != "migrate":
            assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    for name in ("beat", "scheduler-worker", "boefje-worker", "normalizer-worker", "listener", "flower", "api"):
        assert "healthcheck" in ours[name], f"{name} has no health check"
    api_port = ours["api"]["environment"]["SCHEDULER_API_PORT"]
    assert f"http://127.0.0.1:{api_port}/health" in ours["api"]["healthcheck"]["test"][-1]
    assert ours["api"]["environment"]["SCHEDULER_API_HOST"] == "0.0.0.0", "the API must be reachable from outside"
    for name in ("beat", "listener"):
        assert ours[name]["environment"]["SCHEDULER_HEARTBEAT_FILE"], f"{name}'s heartbeat check needs its file"
    for worker, queue in (("scheduler-worker", "scheduler"), ("boefje-worker", "boefjes")):
        ping = ours[worker]["healthcheck"]["test"][1]
        assert f"--destination {queue}@$$HOSTNAME" in ping and queue in ours[worker]["command"]
    assert "FLOWER_BASIC_AUTH" in ours["flower"]["environment"]
    for infra in ("postgres", "redis", "rabbitmq"):
        assert "healthcheck" in services[infra], infra
        assert services[infra].get("volumes"), f"{infra} must keep its data across restarts"
    assert "--appendonly" in services["redis"]["command"], "Redis holds the queued messages: persist them"


def test_flower_refuses_to_start_without_credentials() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    result = subprocess.run(
        [str(ROOT / ".venv/bin/kat-scheduler"), "flower"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "FLOWER_BASIC_AUTH" in result.stderr


def api_answers(port: int) -> bool:
    """The Procfile's API serves the database's schedulers."""
    import requests

    try:
        answer = requests.get(f"http://127.0.0.1:{port}/schedulers", timeout=5)
    except requests.RequestException:
        return False
    return answer.ok and [s["id"] for s in answer.json()] == ["boefje", "normalizer", "report"]


def test_honcho_starts_the_whole_process_set_and_stops_it(
    private_postgres_uri: str, redis_url: str, amqp_url: str, tmp_path: Path
) -> None:
    port, api_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "FLOWER_", "QUEUE_URI"))},
        "SCHEDULER_DB_URI": private_postgres_uri,
        "SCHEDULER_BROKER_URL": redis_url,
        "QUEUE_URI": amqp_url,
        "FLOWER_BASIC_AUTH": "ops:secret",
        "FLOWER_PORT": str(port),
        "SCHEDULER_API_PORT": str(api_port),
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    output = tmp_path / "honcho.out"
    with open(output, "wb") as sink:
        honcho = subprocess.Popen(
            [str(ROOT / ".venv/bin/honcho"), "-f", str(PROCFILE), "-d", str(ROOT), "start"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            import requests

            deadline = time.monotonic() + 60
            ready = False
            while time.monotonic() < deadline and honcho.poll() is None:
                text = output.read_text(errors="replace")
                workers_ready = all(f"{queue}@" in text and "ready." in text for queue in Queue)
                if workers_ready and "listening on" in text and "acquired the lease" in text:
                    try:
                        answer = requests.get(
                            f"http://127.0.0.1:{port}/api/workers",
                            params={"refresh": 1},
                            auth=("ops", "secret"),
                            timeout=10,
                        )
                        workers = answer.json() if answer.ok else {}
                    except (requests.RequestException, ValueError):
                        workers = {}
                    if {name.split("@")[0] for name in workers} >= {q.value for q in Queue} and api_answers(api_port):
                        ready = True
                        break
                time.sleep(1)
            text = output.read_text(errors="replace")
            assert ready, f"the process set did not come up:\n{text[-4000:]}"
            assert not re.search(r"exited with code", text), text[-4000:]
        finally:
            os.killpg(honcho.pid, signal.SIGTERM)
            try:
                honcho.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(honcho.pid, signal.SIGKILL)
                honcho.wait()
                pytest.fail("honcho did not stop the process set within 20 s")
