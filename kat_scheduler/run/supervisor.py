"""Child processes of ``kat-scheduler run``: start, watch, restart, and stop within a budget.

Each child runs in a session (and process group) of its own, so a signal reaches the child and
everything it forked (Celery's pool processes) and Ctrl-C in the terminal reaches only the
supervisor, which then asks the children to stop (SIGTERM) in order: producers first (no new
work), then workers (a warm shutdown finishes the task at hand; acks are late, so an interrupted
task is redelivered, never lost), then Flower, then the services everything uses.

A role is asked to stop as soon as every role before it has exited, and at the latest once the
roles before it had their share of the budget (:data:`STOP_SHARE`, :func:`stop_schedule`); so time
a role does not need passes to the roles after it. Only what is still alive when the *whole*
budget is spent is killed, with its whole group: a child slower than its share (a Python process
needs about half a second of CPU to exit, seconds on a loaded machine) is not killed for it.
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
#: Share of the stop budget each role may take before the roles after it are asked to stop too
#: (it is killed only at the end of the budget). ``kat-scheduler run`` stops the services apart,
#: after its final sample: producers, workers and Flower share 80 %, the services have 20 %.
STOP_SHARE = {Role.PRODUCER: 0.2, Role.WORKER: 0.4, Role.MONITOR: 0.2, Role.SERVICE: 0.2}
#: Seconds between two looks at the children while they stop.
STOP_POLL = 0.05


def stop_schedule(budget: float, roles: Sequence[Role] = STOP_ORDER) -> list[tuple[Role, float]]:
    """Each of ``roles`` in stop order, with the latest moment (seconds after the stop began) it
    is asked to stop: when the roles before it had their shares of ``budget``."""
    chosen = [role for role in STOP_ORDER if role in roles]
    total = sum(STOP_SHARE[role] for role in chosen) or 1.0
    schedule, before = [], 0.0
    for role in chosen:
        schedule.append((role, budget * before / total))
        before += STOP_SHARE[role]
    return schedule


class ChildFailed(RuntimeError):
    """A child exited more often than it may be restarted, or never became ready."""


@dataclass
class ExitReport:
    name: str
    returncode: int | None
    killed: bool
    role: Role = Role.WORKER
    #: Seconds from the child's SIGTERM to its exit, or to its kill (0: it had exited before).
    took: float = 0.0


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
    def __init__(self, env: Mapping[str, str], log_dir: Path, grace: float = 8.0) -> None:
        """``grace``: seconds the children have to stop on their own if this process dies before
        it stopped them (see :mod:`kat_scheduler.run.watchdog`)."""
        self.env = dict(env)
        self.log_dir = log_dir
        self.grace = grace
        self.children: list[Child] = []
        self.watchdog: subprocess.Popen[str] | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, spec: ChildSpec, extra_env: Mapping[str, str] | None = None) -> Child:
        child = Child(spec, {**self.env, **(extra_env or {})}, self.log_dir)
        child.start()
        self.children.append(child)
        self._tell_watchdog(f"+{child.pid}")
        return child

    def _tell_watchdog(self, line: str) -> None:
        """Tell the watchdog (started with the first child) about a group or the end."""
        if self.watchdog is None:
            if line == "end":
                return
            with open(self.log_dir / "watchdog.log", "ab") as log:
                self.watchdog = subprocess.Popen(
                    [sys.executable, "-m", "kat_scheduler.run.watchdog", str(self.grace)],
                    env=self.env,
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
        stdin = self.watchdog.stdin
        try:
            if stdin is not None and not stdin.closed:
                stdin.write(line + "\n")
                stdin.flush()
                if line == "end":
                    stdin.close()
        except OSError:  # the watchdog is gone (someone killed it): the guard still stops each child
            logger.warning(
                "the run's watchdog is gone; a child that hangs after a crash of this process may outlive it"
            )

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
            gone = child.pid
            child.restart()
            self._tell_watchdog(f"-{gone}")
            self._tell_watchdog(f"+{child.pid}")
        return events

    def stop(self, budget: float, roles: Sequence[Role] = STOP_ORDER) -> list[ExitReport]:
        """Stop the children of ``roles`` within ``budget`` seconds, role by role in stop order
        (see :func:`stop_schedule`); kill what is still alive when ``budget`` is spent."""
        started = time.monotonic()
        end = started + budget
        asked: dict[Child, float] = {}
        exited: dict[Child, float] = {}
        earlier: list[Child] = []
        for role, latest in stop_schedule(budget, roles):
            self._wait(earlier, started + latest, exited)
            group = [child for child in self.children if child.spec.role is role]
            for child in group:
                if child.alive:
                    child.signal(signal.SIGTERM)
                    asked[child] = time.monotonic()
            earlier += group
        self._wait(earlier, end, exited)
        reports = []
        for child in earlier:
            if child.alive:
                took = time.monotonic() - asked.get(child, started)
                logger.warning("%s did not stop within %.1fs of SIGTERM; killing it", child.name, took)
                child.signal_group(signal.SIGKILL)
                child.killed = True
                if child.process is not None:
                    child.process.wait(5)
            else:
                took = exited.get(child, started) - asked[child] if child in asked else 0.0
            reports.append(ExitReport(child.name, child.poll(), child.killed, child.spec.role, max(0.0, took)))
        return reports

    def kill_all(self) -> None:
        """Nothing of any child's group may outlive the run; the watchdog is told the run ended."""
        for child in self.children:
            child.signal_group(signal.SIGKILL)
            child.close()
        self._tell_watchdog("end")
        if self.watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog.wait(5)

    @staticmethod
    def _wait(children: Sequence[Child], until: float, exited: dict[Child, float]) -> None:
        """Until every one of ``children`` has exited (noting when in ``exited``), or ``until``."""
        while True:
            now = time.monotonic()
            for child in children:
                if child not in exited and not child.alive:
                    exited[child] = now
            if len(exited.keys() & set(children)) == len(children) or now >= until:
                return
            time.sleep(min(STOP_POLL, max(0.0, until - now)))
