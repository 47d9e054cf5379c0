"""The supervisor of ``kat-scheduler run`` with tiny child processes: restarts, giving up, and
killing what does not stop within its budget."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from kat_scheduler.run.plan import ChildSpec, Role
from kat_scheduler.run.supervisor import MAX_RESTARTS, ChildFailed, Supervisor


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_until_exited(supervisor: Supervisor, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(child.alive for child in supervisor.children) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_child_that_exits_is_restarted_and_the_run_gives_up_after_the_limit(tmp_path: Path) -> None:
    supervisor = Supervisor({}, tmp_path)
    child = supervisor.start(ChildSpec("flaky", python("print('broken config'); raise SystemExit(3)"), Role.WORKER))
    for attempt in range(MAX_RESTARTS):
        wait_until_exited(supervisor)
        assert supervisor.watch() == ["flaky exited (3), restarted"]
        assert child.restarts == attempt + 1
    wait_until_exited(supervisor)
    with pytest.raises(ChildFailed, match=r"flaky exited with code 3 after 3 restarts(.|\n)*broken config"):
        supervisor.watch()
    supervisor.kill_all()


def test_a_healthy_child_is_left_alone(tmp_path: Path) -> None:
    supervisor = Supervisor({}, tmp_path)
    supervisor.start(ChildSpec("steady", python("import time; time.sleep(30)"), Role.WORKER))
    time.sleep(0.3)
    assert supervisor.watch() == []
    reports = supervisor.stop(budget=5)
    assert [(r.name, r.killed) for r in reports] == [("steady", False)]


def test_a_child_that_ignores_sigterm_is_killed_when_its_budget_is_spent(tmp_path: Path) -> None:
    supervisor = Supervisor({}, tmp_path)
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    child = supervisor.start(ChildSpec("stubborn", python(stubborn), Role.PRODUCER))
    deadline = time.monotonic() + 10
    while "up" not in child.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    reports = supervisor.stop(budget=1.0, roles=[Role.PRODUCER])
    assert time.monotonic() - started < 3
    assert [(r.name, r.killed) for r in reports] == [("stubborn", True)]
    assert not child.alive


def test_children_stop_in_order_producers_first_services_last(tmp_path: Path) -> None:
    supervisor = Supervisor({}, tmp_path)
    marker = tmp_path / "order"
    record = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(marker)!r}, 'a').write(sys.argv[1] + '\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    for name, role in (("redis", Role.SERVICE), ("boefjes", Role.WORKER), ("beat", Role.PRODUCER)):
        supervisor.start(ChildSpec(name, [sys.executable, "-c", record, name], role))
    deadline = time.monotonic() + 10
    while not all("up" in c.log_path.read_text() for c in supervisor.children) and time.monotonic() < deadline:
        time.sleep(0.05)
    supervisor.stop(budget=6)
    assert marker.read_text().split() == ["beat", "boefjes", "redis"]


def test_time_a_role_did_not_need_is_left_to_the_roles_after_it(tmp_path: Path) -> None:
    supervisor = Supervisor({}, tmp_path)
    slow_to_stop = (  # stops 1.5 s after SIGTERM: more than its own share of the 4 s (1.33 s)
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.5), sys.exit(0)))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    supervisor.start(ChildSpec("beat", python("import time; time.sleep(60)"), Role.PRODUCER))
    flower = supervisor.start(ChildSpec("flower", python(slow_to_stop), Role.MONITOR))
    deadline = time.monotonic() + 10
    while "up" not in flower.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    reports = supervisor.stop(budget=4.0, roles=[Role.PRODUCER, Role.MONITOR])
    assert time.monotonic() - started < 4.5
    assert [(r.name, r.killed) for r in reports] == [("beat", False), ("flower", False)]
