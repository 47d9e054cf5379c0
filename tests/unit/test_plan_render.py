"""``plan``'s rate-limit section as an operator reads it: what the tick held back (in all and per
group), and the tasks waiting for their window per group."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kat_scheduler.planning.dry_run import render_plan
from kat_scheduler.producers.results import PlanReport
from kat_scheduler.rules import SkipReason
from kat_scheduler.storage.waiting import WaitingGroup

NOW = datetime(2026, 12, 7, 9, 50, tzinfo=UTC)


def section(lines: list[str]) -> list[str]:
    """The lines from ``rate limits:`` up to the queue depth."""
    start = lines.index("rate limits:")
    end = next(i for i, line in enumerate(lines) if line.startswith("queue depth"))
    return lines[start:end]


def test_without_limits_held_back_or_waiting_tasks_the_plan_has_no_rate_limit_section() -> None:
    assert "rate limits:" not in list(render_plan(PlanReport(now=NOW, dry_run=True)))


def test_a_tick_that_holds_tasks_back_says_so_while_none_wait_yet() -> None:
    report = PlanReport(now=NOW, dry_run=False)
    report.skipped[SkipReason.RATE_LIMITED] = 7

    assert section(list(render_plan(report))) == [
        "rate limits:",
        "  this run held back 7 task(s): more than their groups may start before the next run",
        "  waiting for their window: none",
    ]


def test_what_a_tick_holds_back_is_listed_per_group_most_held_first_under_the_total() -> None:
    report = PlanReport(now=NOW, dry_run=True)
    report.skipped[SkipReason.RATE_LIMITED] = 12
    report.rate_limited.update({("1/second", "shodan.io"): 3, ("10/hour;100/day", "host:a.example"): 9})

    assert section(list(render_plan(report))) == [
        "rate limits:",
        "  this run would hold back 12 task(s): more than their groups may start before the next run",
        "    GROUP           LIMIT            HELD BACK",
        "    host:a.example  10/hour;100/day          9",
        "    shodan.io       1/second                 3",
        "  waiting for their window: none",
    ]


def test_waiting_groups_are_listed_with_their_next_opening_and_an_overdue_one_says_what_sends_it() -> None:
    waiting = [
        WaitingGroup("shodan.io", "5/second", 3, NOW - timedelta(seconds=42)),
        WaitingGroup("host:a.example", "1/hour", 1, NOW + timedelta(minutes=30)),
    ]

    assert section(list(render_plan(PlanReport(now=NOW, dry_run=True), waiting=waiting))) == [
        "rate limits:",
        "  this run would hold back none",
        "  waiting for their window: 4 task(s) in 2 group(s)",
        "    GROUP           LIMIT     WAITING  NEXT MAY RUN",
        "    shodan.io       5/second        3  2026-12-07 09:49:18Z (due 42s ago: a worker node's release sends it)",
        "    host:a.example  1/hour          1  2026-12-07 10:20:00Z (in 30m00s)",
    ]


def test_json_lines_hold_the_would_be_tasks_only() -> None:
    waiting = [WaitingGroup("shodan.io", "5/second", 3, NOW)]
    assert list(render_plan(PlanReport(now=NOW, dry_run=True), fmt="jsonl", waiting=waiting)) == []
