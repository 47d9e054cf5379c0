"""No secret in view: with a password in every URL and every password setting set, nothing that
shows configuration shows one of them.

A real worker, beat, Flower and listener run with credentials in the database URL, the broker
URL and QUEUE_URI (two RabbitMQ users of this test's own), the result backend and the KAT service
URLs, plus BYTES_PASSWORD and FLOWER_BASIC_AUTH; the HTTP API (``kat-scheduler api``) runs beside
them, its broker URL (password and all) on a closed port like the KAT services'. Then Flower's
worker API and pages (the worker's Config tab among them), ``celery report``, ``celery inspect
conf``, ``kat-scheduler settings``, ``kat-scheduler status``, the API's answers (health with the
failing externals, metrics, schedulers, OpenAPI, lists, the errors of bad requests, of a KAT
service, of the broker and of the database), ``kat-scheduler api`` refusing a database that is
down, and every process's log (the startup banners included) are read, and none of the secrets
may be in them. Then the texts requests itself puts in its errors (the URL it could not parse,
the header it would not send) are checked as the clients and the API pass them on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest
import requests
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from kat_scheduler.clients import BytesClient, KatalogusClient, OctopoesClient, ServiceError
from kat_scheduler.run.embedded import free_port
from kat_scheduler.runtime.beat import LEASE_NAME
from kat_scheduler.settings import load_settings, masked_text
from kat_scheduler.sim import SimulatedKAT
from kat_scheduler.sim.world import World
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.leases import LeaseStore
from tests.api_server import serve_api
from tests.conftest import service_missing
from tests.workers import celery_worker, stop, wait_for

ROOT = Path(__file__).resolve().parents[2]
#: Variables that configure us, KAT, Flower or Celery: none of the caller's may reach the processes.
CONFIG_PREFIXES = ("SCHEDULER_", "OCTOPOES_", "KATALOGUS_", "BYTES_", "QUEUE_URI", "FLOWER_", "CELERY_")


def new_secret(label: str) -> str:
    """A password no output could contain by chance."""
    return f"sekrit{label}{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Secrets:
    database: str
    broker: str
    events: str
    backend: str
    octopoes: str
    katalogus: str
    bytes_api: str
    bytes_password: str
    flower: str

    @classmethod
    def new(cls) -> Secrets:
        return cls(**{name: new_secret(name.replace("_", "")) for name in (f.name for f in fields(cls))})

    def found_in(self, text: str) -> list[str]:
        """The names of the secrets ``text`` shows, in full or URL-quoted."""
        return [name for name, value in vars(self).items() if value in text or quote(value, safe="") in text]


def vhost_of(amqp_url: str) -> str:
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def rabbitmqctl(*commands: tuple[str, ...]) -> dict[tuple[str, ...], str]:
    """Run the ``rabbitmqctl`` commands all at once (each starts a VM of its own, which is most of
    its time); what each failed one said, by command."""
    running = [
        (
            command,
            subprocess.Popen(["rabbitmqctl", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        )
        for command in commands
    ]
    failed = {}
    for command, process in running:
        try:
            _, said = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, said = process.communicate()
        if process.returncode != 0:
            failed[command] = said
    return failed


@pytest.fixture
def secrets() -> Secrets:
    return Secrets.new()


@contextlib.contextmanager
def rabbitmq_users(amqp_url: str, *passwords: str) -> Iterator[list[str]]:
    """``amqp_url``'s vhost, reached as a new RabbitMQ user per password (in that order); the
    users are deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        service_missing("rabbitmqctl (to create a RabbitMQ user)", FileNotFoundError("rabbitmqctl"))
    users = {f"kat_secrets_{uuid.uuid4().hex[:8]}": password for password in passwords}
    added = rabbitmqctl(*(("add_user", user, password) for user, password in users.items()))
    try:
        assert not added, f"rabbitmqctl add_user failed: {added}"
        allowed = rabbitmqctl(
            *(("set_permissions", "-p", vhost_of(amqp_url), user, ".*", ".*", ".*") for user in users)
        )
        assert not allowed, f"rabbitmqctl set_permissions failed: {allowed}"
        parts = urlsplit(amqp_url)
        host = parts.netloc.rpartition("@")[2]
        yield [
            urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, "", ""))
            for user, password in users.items()
        ]
    finally:
        created = [user for user in users if ("add_user", user, users[user]) not in added]
        deleted = rabbitmqctl(*(("delete_user", user) for user in created))
        assert not deleted, f"rabbitmqctl delete_user failed: {deleted}"


@pytest.fixture
def broker_and_events(amqp_url: str, secrets: Secrets) -> Iterator[tuple[str, str]]:
    """The task broker's and the event bus's URLs, each a RabbitMQ user of this test's own whose
    password is ``secrets.broker`` and ``secrets.events``."""
    with rabbitmq_users(amqp_url, secrets.broker, secrets.events) as (broker, events):
        yield broker, events


def with_password(database_uri: str, password: str) -> str:
    """``database_uri`` with ``password`` (PostgreSQL here trusts loopback, so any password works)."""
    url = make_url(database_uri)
    return url.set(username=url.username or "postgres", password=password).render_as_string(hide_password=False)


@pytest.fixture
def environment(secrets: Secrets, broker_and_events: tuple[str, str], private_postgres_uri: str) -> dict[str, str]:
    """Every credential-bearing setting set, each with its own secret."""
    closed = free_port()  # the KAT services are never reached; a planning tick only fails on them
    broker, events = broker_and_events
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)},
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "SCHEDULER_DB_URI": with_password(private_postgres_uri, secrets.database),
        "SCHEDULER_BROKER_URL": broker,
        "SCHEDULER_RESULT_BACKEND": "db+" + with_password(private_postgres_uri, secrets.backend),
        "QUEUE_URI": events,
        "OCTOPOES_API": f"http://kat:{secrets.octopoes}@127.0.0.1:{closed}",
        "KATALOGUS_API": f"http://kat:{secrets.katalogus}@127.0.0.1:{closed}",
        "BYTES_API": f"http://kat:{secrets.bytes_api}@127.0.0.1:{closed}",
        "BYTES_PASSWORD": secrets.bytes_password,
        "FLOWER_BASIC_AUTH": f"ops:{secrets.flower}",
        "FLOWER_ADDRESS": "127.0.0.1",
        "FLOWER_PORT": str(free_port()),
        "SCHEDULER_HTTP_RETRIES": "0",
    }


def run(argv: list[str], env: dict[str, str], cwd: Path, *, check: bool = True) -> str:
    """Run a command to its end; its output (stdout and stderr)."""
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 0 or not check, f"{' '.join(argv[:6])} failed ({result.returncode}):\n{output}"
    return output


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "kat_scheduler", *args]


def flower_workers(url: str, auth: tuple[str, str]) -> dict[str, Any]:
    try:
        answer = requests.get(f"{url}/api/workers", params={"refresh": 1}, auth=auth, timeout=10)
        workers: dict[str, Any] = answer.json() if answer.ok else {}
    except (requests.RequestException, ValueError):
        workers = {}
    return workers


def started(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as sink:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def api_environment(environment: dict[str, str]) -> dict[str, str]:
    """The API's environment: ``environment`` with the broker URL on a closed port, password and
    all, so that a push shows what the API says when the broker fails (as the KAT services fail),
    and DEBUG logging, so that its log shows all it can."""
    broker = urlsplit(environment["SCHEDULER_BROKER_URL"])
    userinfo = broker.netloc.rpartition("@")[0]
    closed = urlunsplit(broker._replace(netloc=f"{userinfo}@127.0.0.1:{free_port()}"))
    return {**environment, "SCHEDULER_BROKER_URL": closed, "SCHEDULER_LOG_LEVEL": "DEBUG"}


def boefje_push() -> dict[str, Any]:
    """A push as Rocky sends it, for a boefje task."""
    task_id = str(uuid.uuid4())
    data = {"id": task_id, "boefje": {"id": "dns-records"}, "organization": "aa", "input_ooi": "Hostname|internet|a.nl"}
    return {"id": task_id, "scheduler_id": "boefje", "organisation": "aa", "priority": 1, "data": data}


def api_answers(url: str) -> dict[str, str]:
    """What the API answers (status line, headers and body) to the calls its clients make, to bad
    ones, and to calls that fail on KAT, on the broker and on the database, each answered with the
    status the route documents."""
    bad_path = {"column": "data", "operator": "@?", "value": "$.data ?? (( not a JSON path"}
    calls: dict[str, tuple[str, str, dict[str, Any], int | None]] = {
        "health": ("GET", "/health", {}, 200),
        "health with externals": ("GET", "/health", {"params": {"externals": "true"}}, 200),
        "metrics": ("GET", "/metrics", {}, 200),
        "schedulers": ("GET", "/schedulers", {}, 200),
        "a scheduler": ("GET", "/schedulers/boefje", {}, 200),
        "an unknown scheduler": ("GET", "/schedulers/nope", {}, 404),
        "openapi": ("GET", "/openapi.json", {}, 200),
        "docs": ("GET", "/docs", {}, 200),
        "tasks": ("GET", "/tasks", {"params": {"scheduler_id": "boefje", "limit": 5}}, 200),
        "tasks over the limit": ("GET", "/tasks", {"params": {"limit": 501}}, 422),
        "a malformed task id": ("GET", "/tasks/not-a-uuid", {}, 422),
        "an unknown task": ("GET", f"/tasks/{uuid.uuid4()}", {}, 404),
        "task stats": ("GET", "/tasks/stats", {}, 200),
        "a pop": ("POST", "/schedulers/boefje/pop", {"params": {"limit": 2}}, 200),
        "a patch of an unknown task": ("PATCH", f"/tasks/{uuid.uuid4()}", {"json": {"status": "running"}}, 404),
        "schedules": ("GET", "/schedules", {}, 200),
        "an unknown operator": ("POST", "/tasks", {"json": {"filters": [{"column": "id", "operator": "~~"}]}}, 422),
        # PostgreSQL refuses the path (any error status will do: its text is what is read).
        "the database refuses a filter": ("POST", "/tasks", {"json": {"filters": [bad_path]}}, None),
        "a push of bad data": ("POST", "/schedulers/boefje/push", {"json": {"organisation": "aa", "data": {}}}, 400),
        "a push the broker does not take": ("POST", "/schedulers/boefje/push", {"json": boefje_push()}, 503),
        "explain with KAT down": (
            "GET",
            "/explain",
            {"params": {"organisation": "aa", "input_ooi": "Hostname|internet|a.nl"}},
            502,
        ),
    }
    shown: dict[str, str] = {}
    answers: dict[str, requests.Response] = {}
    wrong: dict[str, str] = {}
    for name, (method, path, options, expected) in calls.items():
        # A connection each: uvicorn closes one whose request raised.
        answer = requests.request(method, url + path, timeout=30, **options)
        headers = "\n".join(f"{key}: {value}" for key, value in answer.headers.items())
        shown[f"API {name}"] = f"HTTP {answer.status_code} {answer.reason}\n{headers}\n\n{answer.text}"
        if answer.status_code != expected and (expected is not None or answer.status_code < 400):
            wrong[name] = f"HTTP {answer.status_code}, not {expected or 'an error'}: {answer.text[:300]}"
        answers[name] = answer
    assert wrong == {}, wrong
    externals = answers["health with externals"].json()["externals"]
    assert externals == {"octopoes": False, "katalogus": False, "bytes": False}, "KAT is down, and said so"
    assert "scheduler_qsize" in answers["metrics"].text and "/tasks/stats" in answers["openapi"].text
    return shown


def test_no_password_is_shown_by_celery_flower_our_commands_the_api_or_any_log(
    secrets: Secrets, environment: dict[str, str], private_postgres_uri: str, tmp_path: Path
) -> None:
    worker_name = f"secrets-{uuid.uuid4().hex[:8]}@localhost"
    logs = {name: tmp_path / f"{name}.log" for name in ("worker", "beat", "flower", "listener", "api")}
    flower_url = f"http://127.0.0.1:{environment['FLOWER_PORT']}"
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    auth = ("ops", secrets.flower)
    shown: dict[str, str] = {}

    def log(name: str) -> str:
        return logs[name].read_text(errors="replace")

    with celery_worker("kat_scheduler", ["scheduler"], environment, log_file=logs["worker"], hostname=worker_name):
        processes = [
            started(celery("beat", "-l", "INFO"), environment, tmp_path, logs["beat"]),
            started([sys.executable, "-m", "kat_scheduler", "flower"], environment, tmp_path, logs["flower"]),
            started([sys.executable, "-m", "kat_scheduler", "listen"], environment, tmp_path, logs["listener"]),
            started(
                [sys.executable, "-m", "kat_scheduler", "api", "--host", "127.0.0.1", "--port", str(api_port)],
                api_environment(environment),
                tmp_path,
                logs["api"],
            ),
        ]
        leases = LeaseStore(make_engine(private_postgres_uri, pool_size=1))
        try:
            # Beat works with the password-bearing database URL: it takes the lease, and its
            # first tick runs on the worker (and fails on the unreachable KAT services).
            assert wait_for(lambda: leases.holder(LEASE_NAME) is not None, timeout=60), log("beat")
            assert wait_for(lambda: "kat.scheduler.plan_boefjes[" in log("worker"), timeout=60), log("worker")
            assert wait_for(lambda: "listening on" in log("listener"), timeout=60), log("listener")
            assert wait_for(lambda: "Application startup complete" in log("api"), timeout=60), log("api")
            shown.update(api_answers(api_url))

            workers: dict[str, Any] = {}

            def flower_sees_the_worker() -> bool:
                nonlocal workers
                workers = flower_workers(flower_url, auth)
                return bool(workers.get(worker_name, {}).get("conf"))

            assert wait_for(flower_sees_the_worker, timeout=60, interval=0.5), log("flower")
            assert "task_acks_late" in workers[worker_name]["conf"]
            shown["flower /api/workers"] = requests.get(
                f"{flower_url}/api/workers", params={"refresh": 1}, auth=auth, timeout=10
            ).text
            for page in (f"/worker/{worker_name}", "/broker", "/workers"):
                answer = requests.get(flower_url + page, auth=auth, timeout=10)
                assert answer.ok, f"{page}: HTTP {answer.status_code}"
                shown[f"flower {page}"] = answer.text

            shown["celery inspect conf"] = run(
                celery("inspect", "conf", "-d", worker_name, "--timeout", "10"), environment, tmp_path
            )
            assert "task_acks_late" in shown["celery inspect conf"], "the worker's configuration was not shown"
        finally:
            leases.engine.dispose()
            with ThreadPoolExecutor(len(processes)) as stopping:  # each stops on its own: at once
                list(stopping.map(stop, processes))

    # Four commands run to their end, side by side: what each prints is its own. The API's is
    # started on a database nothing listens on (the password in its URL): it refuses to start.
    no_database = {
        **environment,
        "SCHEDULER_DB_URI": with_password(f"postgresql://kat@127.0.0.1:{free_port()}/kat", secrets.database),
    }
    with ThreadPoolExecutor(4) as commands:
        report = commands.submit(run, celery("report"), environment, tmp_path)
        settings = commands.submit(run, [sys.executable, "-m", "kat_scheduler", "settings"], environment, tmp_path)
        status = commands.submit(
            run, [sys.executable, "-m", "kat_scheduler", "status"], environment, tmp_path, check=False
        )
        api = commands.submit(
            run, [sys.executable, "-m", "kat_scheduler", "api", "--port", "0"], no_database, tmp_path, check=False
        )
        shown["celery report"] = report.result()
        shown["kat-scheduler settings"] = settings.result()
        shown["kat-scheduler status"] = status.result()
        shown["kat-scheduler api without its database"] = api.result()
    assert "broker_url" in shown["celery report"]
    assert "SCHEDULER_DB_URI" in shown["kat-scheduler settings"]
    assert "@127.0.0.1:5432/" in shown["kat-scheduler status"], "status names the database"
    assert "cannot read the database" in shown["kat-scheduler api without its database"]
    shown.update({f"{name} log": log(name) for name in logs})
    assert "transport:" in shown["worker log"], "the worker's banner is part of what is checked"
    assert '"POST /tasks HTTP/1.1" 422' in shown["api log"], "the API's log of requests is part of what is checked"

    leaks = {where: secrets.found_in(text) for where, text in shown.items() if secrets.found_in(text)}
    assert leaks == {}, f"secrets shown: {leaks}"


# --- error texts: what a client error, and so an API answer or log line, may quote --------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("cannot reach 'amqp://kat:PW@rabbit:5672'", "cannot reach 'amqp://kat:***@rabbit:5672'"),
        ("cannot reach (redis://:PW@redis:6379)", "cannot reach (redis://:***@redis:6379)"),
        (
            "Failed to parse: http://kat:PW@127.0.0.1:99999/health",
            "Failed to parse: http://kat:***@127.0.0.1:99999/health",
        ),
        ("url='http://kat:PW@[::1]:8001', and more", "url='http://kat:***@[::1]:8001', and more"),
        ("no URL here: a:PW@b", "no URL here: a:PW@b"),
    ],
)
def test_a_url_quoted_in_a_message_loses_its_password(text: str, shown: str) -> None:
    assert masked_text(text) == shown


class TokenWithANewline(BaseHTTPRequestHandler):
    """A Bytes that hands out a token requests cannot send (it ends in a newline)."""

    token = ""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"access_token": f"{self.token}\n", "token_type": "bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads only what the client makes of the answer."""


@pytest.fixture
def bad_bytes(secrets: Secrets) -> Iterator[str]:
    """The URL (with ``secrets.bytes_api`` as its password) of a Bytes whose token cannot be sent;
    the token is ``secrets.flower`` (no other secret of the test is in play there)."""
    handler = type("Handler", (TokenWithANewline,), {"token": secrets.flower})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="bad-bytes", daemon=True)
    thread.start()
    try:
        yield f"http://kat:{secrets.bytes_api}@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_client_error_quotes_neither_the_urls_password_nor_a_token(secrets: Secrets, bad_bytes: str) -> None:
    """requests quotes the URL it could not parse (password and all) and the header it refuses (the
    bearer token): the client's errors, and their causes, show neither."""
    raised: list[BaseException] = []
    with KatalogusClient(f"http://kat:{secrets.katalogus}@127.0.0.1:99999", retries=0) as katalogus:
        with pytest.raises(
            ServiceError, match=r"request failed: the base URL \(host '127\.0\.0\.1'\) cannot be used: Failed to parse"
        ) as bad_port:
            katalogus.health()
        raised.append(bad_port.value)
    with BytesClient(bad_bytes, "scheduler", secrets.bytes_password, retries=0) as bytes_client:
        with pytest.raises(ServiceError, match="request failed: InvalidHeader") as bad_token:
            bytes_client.boefje_meta("aa")
        raised.append(bad_token.value)
    with pytest.raises(ValueError, match="must be http") as bad_scheme:
        OctopoesClient(f"ftp://kat:{secrets.octopoes}@127.0.0.1:1")
    raised.append(bad_scheme.value)

    told = "\n".join("".join(traceback.format_exception(exc)) for exc in raised)
    assert secrets.found_in(told) == [], told


def test_explain_with_a_bytes_that_fails_shows_neither_its_password_nor_its_token(
    secrets: Secrets,
    bad_bytes: str,
    world: World,
    kat: SimulatedKAT,
    pg_engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``GET /explain`` asks Bytes for the runs of a boefje never run on the object; a Bytes that
    fails is logged and the answer falls back on what a tick saw (nothing here): neither the log
    nor the answer shows a secret."""
    org = world.organisation_ids[0]
    ooi = "Hostname|internet|secrets.example"
    world.add_ooi(org, "Hostname", ooi, level=1)
    world.set_plugin_enabled(org, "dns-records", True)
    settings = load_settings(
        octopoes_api=kat.octopoes_url,
        katalogus_api=kat.katalogus_url,
        bytes_api=bad_bytes,
        bytes_password=secrets.bytes_password,
        db_uri=pg_engine.url.render_as_string(hide_password=False),
        http_retries=0,
    )
    caplog.set_level(logging.INFO)
    with serve_api(settings, pg_engine) as api:
        answer = api.get("/explain", params={"organisation": org, "input_ooi": ooi})

    assert answer.status_code == 200, answer.text
    assert {b["boefje_id"]: b["decision"] for b in answer.json()}["dns-records"] == "queue"
    assert "explain: Bytes did not answer" in caplog.text, "the failure is logged"
    assert secrets.found_in(answer.text + caplog.text) == []
