"""What the terminal of ``kat-scheduler run`` shows, rendered without a terminal."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from sqlalchemy import Engine

from kat_scheduler.run.monitor import Monitor, Sample
from kat_scheduler.run.plan import Role
from kat_scheduler.run.supervisor import ExitReport
from kat_scheduler.run.view import Banner, banner_lines, dashboard, killed_lines, status_line, summary_lines

BANNER = Banner(
    mode="embedded",
    flower_url="http://127.0.0.1:5555",
    flower_user="kat",
    flower_password="s3cret-pw",
    log_dir="/tmp/logs",
    services={"broker": "redis://127.0.0.1:7001/0"},
    status="SCHEDULER_BROKER_URL=redis://127.0.0.1:7001/0 /venv/bin/kat-scheduler status",
)


class NoBroker:
    def queue_depth(self, queue: str) -> int:
        return 0


def sample(completed: int, queued: int = 0, objects: int | None = 100) -> Sample:
    return Sample(
        at=0.0,
        tasks={"boefje": {"completed": completed, "queued": queued}, "normalizer": {"completed": completed // 2}},
        depths={"boefjes": queued, "normalizers": 0, "scheduler": 0},
        objects=objects,
        organisations=2,
    )


def test_the_banner_says_how_to_see_this_runs_status() -> None:
    assert "  status     SCHEDULER_BROKER_URL=redis://127.0.0.1:7001/0 /venv/bin/kat-scheduler status" in banner_lines(
        BANNER
    )


def test_the_banner_says_where_flower_is_and_how_to_log_in() -> None:
    text = "\n".join(banner_lines(BANNER))
    assert "http://127.0.0.1:5555" in text and "user kat" in text and "password s3cret-pw" in text
    assert "kat-scheduler run (embedded)" in text


def test_a_flower_password_the_user_set_is_never_printed() -> None:
    from dataclasses import replace

    text = "\n".join(banner_lines(replace(BANNER, flower_password=None)))
    assert "s3cret-pw" not in text
    assert "user kat  password from FLOWER_BASIC_AUTH" in text


def test_the_dashboard_shows_tasks_queues_processes_and_the_graph(sqlite_engine: Engine, tmp_path: Path) -> None:
    monitor = Monitor(sqlite_engine, NoBroker(), None)  # type: ignore[arg-type]
    monitor.first_objects = 80
    console = Console(record=True, width=140, file=open(tmp_path / "screen", "w"))  # noqa: SIM115
    console.print(dashboard(sample(completed=1234, queued=56), monitor, [], elapsed=12.0, banner=BANNER))
    screen = console.export_text()
    for expected in ("tasks", "boefje", "normalizer", "1,234", "617", "broker queues", "boefjes", "56", "processes"):
        assert expected in screen
    assert "100 (+20 since start, 2 organisations)" in screen


def test_a_status_line_and_the_summary_carry_the_figures(sqlite_engine: Engine) -> None:
    monitor = Monitor(sqlite_engine, NoBroker(), None)  # type: ignore[arg-type]
    monitor.first_objects = 80
    line = status_line(sample(completed=10, queued=3), monitor, elapsed=5.0)
    assert "boefjes[queued=3 running=0 completed=10 failed=0]" in line and "objects=100" in line
    summary = "\n".join(
        summary_lines(
            sample(completed=0),
            sample(completed=40, objects=130),
            monitor,
            20.0,
            [ExitReport("boefjes", 0, False, Role.WORKER, 1.25), ExitReport("beat", 0, False, Role.PRODUCER, 0.5)],
        )
    )
    assert "boefjes: queued 0, dispatched 0, running 0, completed 40" in summary
    assert "finished this run: 60 tasks (3.0/s)" in summary
    assert "objects: 80 -> 130 (+50)" in summary
    assert "processes: all stopped cleanly (the slowest, boefjes, in 1.2s)" in summary
    assert "KILLED" not in summary


def test_the_summary_says_loudly_which_child_was_killed_after_how_long_and_what_that_cut_off(
    sqlite_engine: Engine,
) -> None:
    monitor = Monitor(sqlite_engine, NoBroker(), None)  # type: ignore[arg-type]
    exits = [
        ExitReport("beat", 0, False, Role.PRODUCER, 0.4),
        ExitReport("boefjes", -9, True, Role.WORKER, 4.8),
        ExitReport("flower", -9, True, Role.MONITOR, 1.6),
    ]
    summary = summary_lines(None, sample(completed=1), monitor, 1.0, exits)
    assert "  processes: 2 of 3 did not stop within the stop budget and were KILLED" in "\n".join(summary)
    assert (
        "    boefjes killed 4.8s after it was asked to stop: the tasks it was running are handed on by the "
        "reaper once the worker has been silent for SCHEDULER_WORKER_LOST_AFTER"
    ) in summary
    assert "    flower killed 1.6s after it was asked to stop: nothing is lost: Flower only watches" in summary
    assert "all stopped cleanly" not in "\n".join(summary)
    assert killed_lines(exits) == [line.strip() for line in summary if " killed " in line]
    assert killed_lines([ExitReport("someone", -9, True, Role.WORKER, 2.0)]) == [
        "someone killed 2.0s after it was asked to stop: whatever it was doing was cut off"
    ]
