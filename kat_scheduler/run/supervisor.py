"""Child processes of ``kat-scheduler run``: start, watch, restart, and stop within a budget.

Each child runs in a session (and process group) of its own, so a signal reaches the child and
everything it forked (Celery's pool processes) and Ctrl-C in the terminal reaches only the
supervisor, which then stops the children in order: producers first (no new work), then
workers (a warm shutdown finishes the task at hand; acks are late, so an interrupted task is
redelivered, never lost), then Flower, then the services everything uses. Whatever is still
alive when its share of the budget is spent is killed with its whole group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kat_scheduler.run.plan import STOP_ORDER, ChildSpec, Role

logger = logging.getLogger(__name__)

#: Restarts allowed per child before the run gives up.
MAX_RESTARTS = 3
#: Share of the stop budget (seconds) each role gets before it is killed.
STOP_SHARE = {Role.PRODUCER: 0.2, Role.WORKER: 0.5, Role.MONITOR: 0.1, Role.SERVICE: 0.2}


class ChildFailed(RuntimeError):
    """A child exited more often than it may be restarted, or never became ready."""


@dataclass
class ExitReport:
    name: str
    returncode: int | None
    killed: bool


class Child:
    def __init__(self, spec: ChildSpec, env: Mapping[str, str], log_dir: Path) -> None:
        self.spec = spec
        self.env = dict(env)
        self.log_path = log_dir / f"{spec.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.killed = False
        self._log: IO[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        guard = [sys.executable, "-m", "kat_scheduler.run.guard", str(os.getpid())]
        self.process = subprocess.Popen(
            [*guard, *self.spec.argv],
            env={**self.env, **self.spec.env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logger.debug("started %s (pid %s): %s", self.name, self.process.pid, " ".join(self.spec.argv))

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child alone: a Celery worker then stops its own pool processes
        after their tasks (a signal to the whole group would kill the tasks too)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child and everything it forked."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def restart(self) -> None:
        self.restarts += 1
        self.signal_group(signal.SIGKILL)  # leftovers of the previous incarnation
        self.close()
        self.start()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, spec: ChildSpec, extra_env: Mapping[str, str] | None = None) -> Child:
        child = Child(spec, {**self.env, **(extra_env or {})}, self.log_dir)
        child.start()
        self.children.append(child)
        return child

    def watch(self) -> list[str]:
        """Restart children that exited; returns what happened. Raises :class:`ChildFailed`."""
        events = []
        for child in self.children:
            code = child.poll()
            if code is None:
                continue
            if child.restarts >= MAX_RESTARTS:
                raise ChildFailed(
                    f"{child.name} exited with code {code} after {child.restarts} restarts; "
                    f"its log ({child.log_path}) ends with:\n{child.tail()}"
                )
            logger.info("%s exited with code %s; restarting it (see %s)", child.name, code, child.log_path)
            events.append(f"{child.name} exited ({code}), restarted")
            child.restart()
        return events

    def stop(self, budget: float, roles: Sequence[Role] = STOP_ORDER) -> list[ExitReport]:
        """Stop the children of ``roles``, role by role, in stop order; kill what is left when
        its share of ``budget`` is spent. Time a role did not need is left to the roles after it,
        so the whole stop never takes longer than ``budget``."""
        reports: list[ExitReport] = []
        chosen = [role for role in STOP_ORDER if role in roles]
        total = sum(STOP_SHARE[role] for role in chosen) or 1.0
        started = time.monotonic()
        allotted = 0.0
        for role in chosen:
            allotted += budget * STOP_SHARE[role] / total
            group = [child for child in self.children if child.spec.role is role]
            reports += self._stop_group(group, max(0.0, started + allotted - time.monotonic()))
        return reports

    def kill_all(self) -> None:
        """Nothing of any child's group may outlive the run."""
        for child in self.children:
            child.signal_group(signal.SIGKILL)
            child.close()

    @staticmethod
    def _stop_group(children: Sequence[Child], timeout: float) -> list[ExitReport]:
        for child in children:
            if child.alive:
                child.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(child.alive for child in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        reports = []
        for child in children:
            if child.alive:
                logger.warning("%s did not stop within %.1fs; killing it", child.name, timeout)
                child.signal_group(signal.SIGKILL)
                child.killed = True
                if child.process is not None:
                    child.process.wait(5)
            reports.append(ExitReport(child.name, child.poll(), child.killed))
        return reports
