"""Start real ``celery worker`` and ``kat-scheduler listen`` processes for integration tests, and stop them cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def celery_worker(
    app: str,
    queues: list[str],
    env: dict[str, str],
    *,
    concurrency: int = 1,
    pool: str = "prefork",
    log_file: Path | None = None,
    hostname: str = "test-worker@%h",
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``celery -A app worker`` subprocess; stopped (TERM, then KILL) when the block ends."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-n",
        hostname,
        "--without-mingle",
        "--without-gossip",
        "-l",
        "INFO",
    ]
    output = open(log_file, "wb") if log_file else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        stop(process)
        if not isinstance(output, int):  # a file of ours, not DEVNULL
            output.close()


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def kat_env(kat: Any, postgres_uri: str, redis_url: str, **extra: str) -> dict[str, str]:
    """A scheduler process's settings against the simulated KAT ``kat`` (its three services),
    the test's database and broker, and ``extra``."""
    return {
        "OCTOPOES_API": kat.octopoes_url,
        "KATALOGUS_API": kat.katalogus_url,
        "BYTES_API": kat.bytes_url,
        "SCHEDULER_DB_URI": postgres_uri,
        "SCHEDULER_BROKER_URL": redis_url,
        **extra,
    }


def start_listener(
    kat: Any, events_url: str, postgres_uri: str, redis_url: str, log: IO[bytes], **extra: str
) -> subprocess.Popen[bytes]:
    """A ``kat-scheduler listen`` process on ``events_url`` against the simulated KAT ``kat``, the
    test's database and broker, with the settings ``extra``; its output goes to ``log``. Stop it
    with :func:`stop`."""
    return subprocess.Popen(
        [sys.executable, "-m", "kat_scheduler", "listen"],
        env={
            **os.environ,
            **kat_env(kat, postgres_uri, redis_url, QUEUE_URI=events_url, **extra),
            "PYTHONPATH": str(ROOT),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )


def probe_env(kat: Any, postgres_uri: str, redis_url: str, **extra: str) -> dict[str, str]:
    """:func:`kat_env` for a worker whose probe tasks record what they ran in ``redis_url``."""
    return {**kat_env(kat, postgres_uri, redis_url, PROBE_REDIS_URL=redis_url), **extra}


def write_plugin(root: Path, folder: str, description: str, module: str, plugin_id: str, code: str) -> None:
    """A local plugin in KAT's layout: ``root/folder`` with its ``description`` JSON and ``module``."""
    (root / folder).mkdir(parents=True)
    (root / folder / description).write_text(json.dumps({"id": plugin_id, "name": plugin_id}))
    (root / folder / module).write_text(textwrap.dedent(code))
