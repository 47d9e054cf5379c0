"""The reaper's decisions (rules/repair.py): every answer, from its facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kat_scheduler.rules import BytesRun, DueReason, NotDueReason
from kat_scheduler.rules.repair import (
    LostMessages,
    MarkerState,
    RequeueFacts,
    broker_marker_state,
    bytes_runs_horizon,
    lost_messages,
    may_requeue,
    node_confirm_after,
    node_lost_after,
    prune_due,
    stuck_running_after,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
STALL = timedelta(hours=1)


def going(ago: timedelta) -> BytesRun:
    return BytesRun(started_at=NOW - ago, ended_at=None)


@pytest.mark.parametrize(
    ("task_started", "run", "due", "reason", "until"),
    [
        pytest.param(NOW - 10 * MINUTE, None, True, DueReason.REPAIRED, None, id="nothing in bytes"),
        pytest.param(
            NOW - 10 * MINUTE,
            BytesRun(NOW - 20 * MINUTE, NOW - 15 * MINUTE),
            True,
            DueReason.REPAIRED,
            None,
            id="an ended run in bytes",
        ),
        pytest.param(NOW - 10 * MINUTE, going(9 * MINUTE), True, DueReason.REPAIRED, None, id="its own run going"),
        pytest.param(NOW - 10 * MINUTE, going(10 * MINUTE), True, DueReason.REPAIRED, None, id="started with it"),
        pytest.param(
            NOW - 10 * MINUTE,
            going(11 * MINUTE),
            False,
            NotDueReason.RUNNING,
            NOW - 11 * MINUTE + STALL,
            id="another runner's run going",
        ),
        pytest.param(
            None, going(MINUTE), False, NotDueReason.RUNNING, NOW - MINUTE + STALL, id="never started, a run going"
        ),
        pytest.param(None, going(STALL), True, DueReason.STALLED, None, id="never started, a stalled run"),
        pytest.param(
            NOW - 10 * MINUTE, going(2 * STALL), True, DueReason.STALLED, None, id="another runner's run stalled"
        ),
        pytest.param(None, BytesRun(None, None), True, DueReason.REPAIRED, None, id="a run without times"),
    ],
)
def test_may_requeue(
    task_started: datetime | None,
    run: BytesRun | None,
    due: bool,
    reason: DueReason | NotDueReason,
    until: datetime | None,
) -> None:
    decision = may_requeue(RequeueFacts(NOW, task_started, run, STALL))
    assert (decision.due, decision.reason, decision.until) == (due, reason, until)


@pytest.mark.parametrize(
    ("depth", "action"),
    [(None, LostMessages.UNKNOWN), (0, LostMessages.REPUBLISH), (1, LostMessages.WAIT), (500, LostMessages.WAIT)],
)
def test_lost_messages_are_republished_only_from_a_queue_surely_empty(depth: int | None, action: LostMessages) -> None:
    assert lost_messages(depth) is action


@pytest.mark.parametrize(
    ("present", "remembered", "state"),
    [
        ("a", "a", MarkerState.KEPT),
        ("b", "a", MarkerState.ADOPT),
        ("b", None, MarkerState.ADOPT),
        (None, "a", MarkerState.WIPED),
        (None, None, MarkerState.FIRST),
    ],
)
def test_the_broker_marker(present: str | None, remembered: str | None, state: MarkerState) -> None:
    assert broker_marker_state(present, remembered) is state


def test_when_rows_and_nodes_count_as_lost() -> None:
    assert stuck_running_after(120, 60) == 180
    assert node_lost_after(15, 10) == timedelta(seconds=30)  # at least three heartbeats
    assert node_lost_after(60, 10) == timedelta(seconds=60)
    assert node_confirm_after(10) == timedelta(seconds=15)


def test_bytes_runs_are_kept_for_the_longest_horizon_that_can_matter() -> None:
    assert bytes_runs_horizon(7, 86400, 180) == timedelta(days=7)
    assert bytes_runs_horizon(1, 3 * 86400, 180) == timedelta(days=4)
    assert bytes_runs_horizon(0, 0, 10 * 86400) == timedelta(days=10)


@pytest.mark.parametrize(
    ("last", "clock", "due"), [(None, 5.0, True), (100.0, 200.0, False), (100.0, 3700.0, True), (100.0, 3699.0, False)]
)
def test_prune_at_most_once_per_period(last: float | None, clock: float, due: bool) -> None:
    assert prune_due(last, clock, 3600.0) is due
