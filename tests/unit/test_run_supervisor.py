"""The supervisor of ``kat-scheduler run`` with tiny child processes: restarts, giving up, and
killing what does not stop within its budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kat_scheduler.run.command import FINAL_SAMPLE_BUDGET, STOP_BUDGET, WORK_ROLES, WORK_SHARE
from kat_scheduler.run.plan import STOP_ORDER, ChildSpec, Role
from kat_scheduler.run.supervisor import MAX_RESTARTS, ChildFailed, Supervisor, stop_schedule


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
    slow_to_stop = (  # stops 1.5 s after SIGTERM
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


def test_the_stop_budget_is_split_in_stop_order_and_the_run_keeps_its_10_s_promise() -> None:
    def rounded(schedule: list[tuple[Role, float]]) -> list[tuple[Role, float]]:
        return [(role, round(at, 6)) for role, at in schedule]

    # When each role is asked to stop at the latest: once the roles before it had their shares.
    assert rounded(stop_schedule(8.0)) == [
        (Role.PRODUCER, 0.0),
        (Role.WORKER, 1.6),
        (Role.MONITOR, 4.8),
        (Role.SERVICE, 6.4),
    ]
    assert rounded(stop_schedule(6.4, WORK_ROLES)) == [(Role.PRODUCER, 0.0), (Role.WORKER, 1.6), (Role.MONITOR, 4.8)]
    assert rounded(stop_schedule(1.6, [Role.SERVICE])) == [(Role.SERVICE, 0.0)]
    assert rounded(stop_schedule(2.0, [Role.MONITOR, Role.PRODUCER])) == [(Role.PRODUCER, 0.0), (Role.MONITOR, 1.0)]
    assert [role for role, _ in stop_schedule(8.0)] == list(STOP_ORDER)
    # The run: producers, workers and Flower get 6.4 s, the final sample 1.5 s at most, the
    # services at least 1.6 s (and whatever the others left): at most 9.5 s, within the 10 s promised.
    assert round(STOP_BUDGET * WORK_SHARE, 6) == 6.4
    worst = STOP_BUDGET * WORK_SHARE + FINAL_SAMPLE_BUDGET + STOP_BUDGET * (1 - WORK_SHARE)
    assert worst <= 10.0


def test_a_producer_slower_than_its_share_is_not_killed_and_does_not_hold_the_workers_stop(tmp_path: Path) -> None:
    supervisor = Supervisor({}, tmp_path)
    marker = tmp_path / "events"
    child = (  # on SIGTERM: says so, takes argv[2] seconds to finish, says so, exits
        "import signal, sys, time\n"
        "def note(what):\n"
        f"    open({str(marker)!r}, 'a').write(sys.argv[1] + ' ' + what + '\\n')\n"
        "def bye(*_):\n"
        "    note('asked'); time.sleep(float(sys.argv[2])); note('exits'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    supervisor.start(ChildSpec("beat", [sys.executable, "-c", child, "beat", "2.5"], Role.PRODUCER))
    supervisor.start(ChildSpec("boefjes", [sys.executable, "-c", child, "boefjes", "0"], Role.WORKER))
    deadline = time.monotonic() + 10
    while not all("up" in c.log_path.read_text() for c in supervisor.children) and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    reports = supervisor.stop(budget=6.4, roles=WORK_ROLES)  # the producers' share: 1.6 s
    assert time.monotonic() - started < 6.4
    assert [(r.name, r.killed, r.returncode) for r in reports] == [("beat", False, 0), ("boefjes", False, 0)]
    # The workers were asked once the producers' share was spent, while beat was still finishing.
    assert marker.read_text().split("\n")[:3] == ["beat asked", "boefjes asked", "boefjes exits"]
    assert "beat exits" in marker.read_text()
    took = {r.name: r.took for r in reports}
    assert took["beat"] >= 2.5 and took["boefjes"] < took["beat"]


def test_roles_after_a_quick_one_are_asked_at_once(tmp_path: Path) -> None:
    supervisor = Supervisor({}, tmp_path)
    supervisor.start(ChildSpec("beat", python("import time; time.sleep(60)"), Role.PRODUCER))  # SIGTERM ends it
    worker = supervisor.start(ChildSpec("boefjes", python("import time; time.sleep(60)"), Role.WORKER))
    deadline = time.monotonic() + 10
    while not all(child.alive for child in supervisor.children) and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    reports = supervisor.stop(budget=6.4, roles=WORK_ROLES)
    # Not 1.6 s (the producers' share): the worker was asked as soon as beat had exited.
    assert time.monotonic() - started < 1.5
    assert [(r.name, r.killed) for r in reports] == [("beat", False), ("boefjes", False)]
    assert not worker.alive


def test_a_child_that_hangs_on_its_stop_does_not_outlive_a_supervisor_killed_with_sigkill(tmp_path: Path) -> None:
    # A Celery worker whose SIGTERM comes while its pool starts can hang in its shutdown for good;
    # a child that ignores SIGTERM stands in for it. The guard's SIGTERM cannot stop it: the
    # watchdog kills its group once the grace has passed.
    hanging = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"
    )
    supervisor_code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from kat_scheduler.run.plan import ChildSpec, Role\n"
        "from kat_scheduler.run.supervisor import Supervisor\n"
        f"supervisor = Supervisor({{}}, Path({str(tmp_path)!r}), grace=1.0)\n"
        f"child = supervisor.start(ChildSpec('hanging', [sys.executable, '-c', {hanging!r}], Role.WORKER))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    supervisor = subprocess.Popen(python(supervisor_code), stdout=subprocess.PIPE, text=True)
    try:
        assert supervisor.stdout is not None
        child = int(supervisor.stdout.readline())
        log = tmp_path / "hanging.log"
        deadline = time.monotonic() + 10
        while "up" not in log.read_text() and time.monotonic() < deadline:  # SIGTERM is ignored from here
            time.sleep(0.05)
        supervisor.kill()
        supervisor.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.killpg(child, signal.SIGKILL)
            pytest.fail("a child that ignores SIGTERM outlived its SIGKILLed supervisor")
        assert "killed 1 process group(s) left after the supervisor died" in (tmp_path / "watchdog.log").read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def test_a_run_that_ends_cleanly_lets_its_watchdog_go_without_killing_anything(tmp_path: Path) -> None:
    supervisor = Supervisor({}, tmp_path, grace=30)
    supervisor.start(ChildSpec("steady", python("import time; time.sleep(30)"), Role.WORKER))
    supervisor.stop(budget=5)
    started = time.monotonic()
    supervisor.kill_all()
    assert supervisor.watchdog is not None and supervisor.watchdog.poll() == 0
    assert time.monotonic() - started < 5, "the watchdog waited for its grace after a clean end"
    assert "killed" not in (tmp_path / "watchdog.log").read_text()
