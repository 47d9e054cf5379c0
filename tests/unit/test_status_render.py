"""``kat-scheduler status``'s plain-text rendering, from hand-made reports."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kat_scheduler.models.producers import RunOutcome
from kat_scheduler.models.tasks import TaskStatus
from kat_scheduler.status import (
    BrokerSection,
    DatabaseSection,
    ProducersSection,
    ProducerStatus,
    QueueDepth,
    SchedulesSection,
    StalledGroup,
    StalledRow,
    StalledSection,
    StatusReport,
    TasksSection,
    render_table,
)
from kat_scheduler.status.render import duration

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def bands(**counts: int) -> dict[int, int]:
    return {band: counts.get(f"b{band}", 0) for band in range(10)}


def statuses(**counts: int) -> dict[TaskStatus, int]:
    return {status: counts.get(status.value, 0) for status in TaskStatus}


def stalled_row(age: float) -> StalledRow:
    return StalledRow(
        id=uuid.UUID(int=7),
        scheduler_id="boefje",
        organisation="aa",
        plugin_id="dns-records",
        input_ooi="Hostname|internet|a.example.nl",
        status=TaskStatus.RUNNING,
        since=NOW - timedelta(seconds=age),
        age_seconds=age,
        worker="lost-host:12",
        attempts=1,
    )


def healthy_report() -> StatusReport:
    return StatusReport(
        generated_at=NOW,
        database=DatabaseSection(url="postgresql://kat:***@db/kat", revision="0003", head="0003", up_to_date=True),
        broker=BrokerSection(
            transport="redis",
            url="redis://127.0.0.1:6379/0",
            queues=[
                QueueDepth(queue="boefjes", messages=5, bands=bands(b0=1, b9=4)),
                QueueDepth(queue="normalizers", messages=0, bands=bands()),
                QueueDepth(queue="scheduler", messages=2, bands=bands(b2=2)),
            ],
        ),
        tasks=TasksSection(
            total=8,
            by_status=statuses(queued=5, running=1, completed=2),
            by_scheduler={"boefje": statuses(queued=5, running=1, completed=1), "normalizer": statuses(completed=1)},
            queued_by_band={"boefjes": bands(b0=1, b9=4), "normalizers": bands()},
        ),
        schedules=SchedulesSection(
            enabled=40, disabled=2, due=3, oldest_due_at=NOW - timedelta(seconds=95), oldest_due_seconds=95
        ),
        producers=ProducersSection(
            producers=[
                ProducerStatus(
                    name="plan-boefjes",
                    started_at=NOW - timedelta(seconds=15),
                    finished_at=NOW - timedelta(seconds=14),
                    age_seconds=14,
                    duration_seconds=0.5,
                    interval_seconds=60,
                    outcome=RunOutcome.OK,
                    host="sched-1",
                    pid=4242,
                    summary={"organisations": 3, "planning_tasks": 1, "nested": {"x": 1}},
                ),
                ProducerStatus(
                    name="reap",
                    started_at=NOW - timedelta(hours=2),
                    finished_at=NOW - timedelta(hours=2),
                    age_seconds=7200,
                    duration_seconds=0.01,
                    interval_seconds=60,
                    late=True,
                    outcome=RunOutcome.ERROR,
                    host="sched-2",
                    pid=7,
                    summary={},
                    error="OperationalError: the database went away",
                ),
                ProducerStatus(name="listener"),
            ]
        ),
        stalled=StalledSection(
            running=StalledGroup(criterion="running too long", threshold_seconds=420, count=3, rows=[stalled_row(600)]),
            unpublished=StalledGroup(criterion="never published", threshold_seconds=60, count=0, rows=[]),
        ),
    )


def lines_after(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i]), len(lines))
    return lines[start + 1 : end]


def test_a_healthy_report_says_ok_and_shows_each_queue_per_band() -> None:
    text = render_table(healthy_report())
    assert text.splitlines()[0] == "kat-scheduler status at 2026-11-23 12:00:00Z: ok"
    broker = lines_after(text, "Broker")
    assert broker[0].split() == ["queue", "total", *[f"b{n}" for n in range(10)]]
    assert broker[1].split() == ["boefjes", "5", "1", "0", "0", "0", "0", "0", "0", "0", "0", "4"]
    assert broker[3].split() == ["scheduler", "2", "0", "0", "2", *["0"] * 7]


def test_tasks_are_shown_per_status_and_scheduler_with_totals() -> None:
    rows = {line.split()[0]: line.split()[1:] for line in lines_after(render_table(healthy_report()), "Tasks")}
    assert rows["status"] == ["boefje", "normalizer", "total"]
    assert rows["queued"] == ["5", "0", "5"]
    assert rows["completed"] == ["1", "1", "2"]
    assert rows["total"] == ["7", "1", "8"]
    queued = lines_after(render_table(healthy_report()), "Queued tasks per band")
    assert queued[1].split() == ["boefjes", "5", "1", *["0"] * 8, "4"]


def test_producers_show_age_outcome_lateness_and_their_error() -> None:
    text = render_table(healthy_report())
    producers = lines_after(text, "Producers")
    plan = next(line for line in producers if line.startswith("plan-boefjes"))
    assert "14s ago" in plan and " ok " in plan and "sched-1:4242" in plan
    assert "organisations=3 planning_tasks=1" in plan and "nested" not in plan
    reap = next(line for line in producers if line.startswith("reap"))
    assert "2h00m ago" in reap and "error LATE" in reap
    assert "  reap: OperationalError: the database went away" in producers
    assert next(line for line in producers if line.startswith("listener")).split() == ["listener", "never"]


def test_schedules_and_stalled_rows_are_spelled_out() -> None:
    text = render_table(healthy_report())
    assert "  enabled 40, disabled 2, due now 3 (oldest due 1m35s ago)" in text
    stalled = lines_after(text, "Stalled rows")
    assert stalled[0] == "  3 running too long (7m00s)"
    assert str(uuid.UUID(int=7)) in stalled[1] and "running for 10m00s by lost-host:12" in stalled[1]
    assert stalled[2] == "    ... and 2 more"
    assert stalled[3] == "  0 never published (1m00s)"


def test_a_failed_section_shows_its_error_and_the_rest_is_still_rendered() -> None:
    report = healthy_report()
    report.broker = BrokerSection(transport="redis", url="redis://h:1/0", error="ConnectionError: refused")
    text = render_table(report)
    assert report.ok is False and report.failed == ["broker"]
    assert text.splitlines()[0].endswith(": FAILED: broker")
    assert lines_after(text, "Broker") == ["  ERROR: ConnectionError: refused"]
    assert lines_after(text, "Tasks")  # still there


def test_a_broker_left_unread_is_said_to_be_and_is_no_failure() -> None:
    report = healthy_report()
    report.broker = BrokerSection(transport="redis", url="redis://h:1/0")
    text = render_table(report)
    assert report.ok and text.splitlines()[0].endswith(": ok")
    assert "Broker  redis://h:1/0  not read (--no-broker): no queue depths" in text.splitlines()


def test_rabbitmq_depths_show_totals_consumers_and_undeclared_queues() -> None:
    report = healthy_report()
    report.broker = BrokerSection(
        transport="amqp",
        url="amqp://guest:***@rabbit:5672//",
        queues=[
            QueueDepth(queue="boefjes", messages=12, consumers=2),
            QueueDepth(queue="normalizers", error="not declared yet (NOT_FOUND)"),
        ],
    )
    broker = lines_after(render_table(report), "Broker")
    assert broker[0].split() == ["queue", "total", "consumers"]
    assert broker[1].split() == ["boefjes", "12", "2"]
    assert broker[2].split() == ["normalizers", "-", "-", "ERROR:", "not", "declared", "yet", "(NOT_FOUND)"]
    assert broker[3].startswith("(RabbitMQ gives no count per priority")


def test_the_table_is_plain_ascii_without_escape_codes_or_trailing_blanks() -> None:
    text = render_table(healthy_report())
    assert text.isascii() and "\x1b" not in text
    assert all(line == line.rstrip() for line in text.splitlines())


def test_the_json_has_the_documented_keys_and_bands_as_keys() -> None:
    data = json.loads(healthy_report().model_dump_json(indent=2))
    assert set(data) == {
        "generated_at",
        "ok",
        "failed",
        "database",
        "broker",
        "tasks",
        "schedules",
        "producers",
        "stalled",
    }
    assert data["broker"]["queues"][0]["bands"]["9"] == 4
    assert data["tasks"]["by_status"]["queued"] == 5


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.25, "0.25s"), (42, "42s"), (200, "3m20s"), (7500, "2h05m"), (3 * 86400 + 4 * 3600, "3d04h")],
)
def test_durations_read_at_a_glance(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


def test_an_age_is_never_negative() -> None:
    from datetime import UTC, datetime, timedelta

    from kat_scheduler.status.collect import age_seconds

    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert age_seconds(now, now + timedelta(seconds=1)) == 0.0
    assert age_seconds(now, now - timedelta(seconds=90)) == 90.0
    assert age_seconds(now, None) is None
