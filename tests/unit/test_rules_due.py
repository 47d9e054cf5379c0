"""Whether a (boefje, object) pair is due: every reason, due or not, from the pair's facts."""

from __future__ import annotations

import ast
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kat_scheduler.rules import BytesRun, DueReason, NotDueReason, PairFacts, is_due, may_push

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # a Monday
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
STALL = timedelta(minutes=7)

FACTS = PairFacts(
    now=NOW,
    last_ended=None,
    bytes_run=None,
    interval=None,
    cron=None,
    default_grace=DAY,
    stall_age=STALL,
)


def ended(ago: timedelta, took: timedelta = timedelta(seconds=30)) -> BytesRun:
    return BytesRun(started_at=NOW - ago - took, ended_at=NOW - ago)


def started(ago: timedelta) -> BytesRun:
    return BytesRun(started_at=NOW - ago, ended_at=None)


@pytest.mark.parametrize(
    ("facts", "due", "reason", "until"),
    [
        pytest.param({}, True, DueReason.NEVER_RUN, None, id="never run anywhere"),
        pytest.param({"bytes_run": BytesRun(None, None)}, True, DueReason.NEVER_RUN, None, id="a run without times"),
        # Grace: the default, or the plugin's interval in minutes.
        pytest.param({"last_ended": NOW - 23 * HOUR}, False, NotDueReason.GRACE, NOW + HOUR, id="our run, in grace"),
        pytest.param({"last_ended": NOW - DAY}, True, DueReason.GRACE_OVER, None, id="our run, grace just over"),
        pytest.param({"bytes_run": ended(2 * HOUR)}, False, NotDueReason.GRACE, NOW + 22 * HOUR, id="bytes, in grace"),
        pytest.param({"bytes_run": ended(10 * DAY)}, True, DueReason.GRACE_OVER, None, id="bytes, grace over"),
        pytest.param(
            {"last_ended": NOW - 30 * HOUR, "bytes_run": ended(2 * HOUR)},
            False,
            NotDueReason.GRACE,
            NOW + 22 * HOUR,
            id="the later end of ours and bytes counts",
        ),
        pytest.param(
            {"last_ended": NOW - 2 * HOUR, "interval": 60}, True, DueReason.GRACE_OVER, None, id="interval over"
        ),
        pytest.param(
            {"last_ended": NOW - 50 * timedelta(minutes=1), "interval": 60},
            False,
            NotDueReason.GRACE,
            NOW + timedelta(minutes=10),
            id="inside the interval",
        ),
        # Cron decides when set, whatever the grace period says.
        pytest.param(
            {"last_ended": NOW - 10 * HOUR, "cron": "0 4 * * *"},
            True,
            DueReason.CRON_PASSED,
            None,
            id="cron time passed inside the grace period",
        ),
        pytest.param(
            {"last_ended": NOW - 7 * HOUR, "cron": "0 4 * * *"},
            False,
            NotDueReason.CRON,
            datetime(2026, 6, 2, 4, 0, tzinfo=UTC),
            id="before the next cron time",
        ),
        pytest.param(
            {"last_ended": NOW - 5 * HOUR, "cron": "30 2 * * 1", "interval": 60},
            False,
            NotDueReason.CRON,
            datetime(2026, 6, 8, 2, 30, tzinfo=UTC),
            id="cron, not the interval",
        ),
        # Bytes' newest run has a start and no end: running, unless older than the stall age.
        pytest.param(
            {"bytes_run": started(timedelta(minutes=2))},
            False,
            NotDueReason.RUNNING,
            NOW + timedelta(minutes=5),
            id="running in bytes",
        ),
        pytest.param(
            {"bytes_run": started(timedelta(minutes=2)), "last_ended": NOW - 10 * DAY},
            False,
            NotDueReason.RUNNING,
            NOW + timedelta(minutes=5),
            id="running in bytes, our run long over",
        ),
        pytest.param(
            {"bytes_run": started(timedelta(minutes=2)), "cron": "0 4 * * *"},
            False,
            NotDueReason.RUNNING,
            NOW + timedelta(minutes=5),
            id="running in bytes, a cron boefje",
        ),
        pytest.param({"bytes_run": started(STALL)}, True, DueReason.STALLED, None, id="stalled at the stall age"),
        pytest.param({"bytes_run": started(3 * HOUR)}, True, DueReason.STALLED, None, id="stalled long ago"),
        pytest.param(
            {"bytes_run": started(3 * HOUR), "last_ended": NOW - 2 * DAY},
            True,
            DueReason.STALLED,
            None,
            id="stalled, our run over its grace",
        ),
        pytest.param(
            {"bytes_run": started(3 * HOUR), "last_ended": NOW - HOUR},
            False,
            NotDueReason.GRACE,
            NOW + 23 * HOUR,
            id="stalled, our own run still in grace",
        ),
        pytest.param(
            {"bytes_run": started(3 * HOUR), "last_ended": NOW - HOUR, "cron": "0 4 * * *"},
            False,
            NotDueReason.CRON,
            datetime(2026, 6, 2, 4, 0, tzinfo=UTC),
            id="stalled, our own cron run is recent",
        ),
    ],
)
def test_is_due(facts: dict[str, object], due: bool, reason: DueReason | NotDueReason, until: datetime | None) -> None:
    decision = is_due(replace(FACTS, **facts))  # type: ignore[arg-type]
    assert (decision.due, decision.reason, decision.until) == (due, reason, until)


def test_the_decision_names_the_run_end_it_counted_from() -> None:
    ours, bytes_end = NOW - 30 * HOUR, NOW - 2 * HOUR
    assert is_due(replace(FACTS, last_ended=ours, bytes_run=ended(2 * HOUR))).last_ended == bytes_end
    assert is_due(replace(FACTS, last_ended=ours, bytes_run=started(3 * HOUR))).last_ended == ours
    assert is_due(replace(FACTS, bytes_run=started(3 * HOUR))).last_ended is None


def test_a_configured_stall_age_decides_when_a_run_without_an_end_is_dead() -> None:
    run = started(2 * HOUR)
    assert is_due(replace(FACTS, bytes_run=run, stall_age=3 * HOUR)).reason == NotDueReason.RUNNING
    assert is_due(replace(FACTS, bytes_run=run, stall_age=HOUR)).reason == DueReason.STALLED


@pytest.mark.parametrize(
    ("facts", "due", "reason", "until"),
    [
        pytest.param({}, True, DueReason.MANUAL, None, id="never run"),
        pytest.param({"last_ended": NOW - HOUR}, True, DueReason.MANUAL, None, id="our run inside grace: bypassed"),
        pytest.param({"bytes_run": ended(HOUR)}, True, DueReason.MANUAL, None, id="bytes run inside grace: bypassed"),
        pytest.param(
            {"last_ended": NOW - HOUR, "interval": 600}, True, DueReason.MANUAL, None, id="inside interval: bypassed"
        ),
        pytest.param(
            {"bytes_run": ended(HOUR), "cron": "0 4 * * *"}, True, DueReason.MANUAL, None, id="before cron: bypassed"
        ),
        pytest.param(
            {"bytes_run": started(timedelta(minutes=2))},
            False,
            NotDueReason.RUNNING,
            NOW + timedelta(minutes=5),
            id="running in bytes",
        ),
        pytest.param(
            {"bytes_run": started(timedelta(minutes=2)), "last_ended": NOW - DAY},
            False,
            NotDueReason.RUNNING,
            NOW + timedelta(minutes=5),
            id="running in bytes, started after our last run",
        ),
        pytest.param(
            {"bytes_run": started(timedelta(minutes=2)), "last_ended": NOW - timedelta(minutes=1)},
            True,
            DueReason.MANUAL,
            None,
            id="seen going before our own run ended: older news",
        ),
        pytest.param({"bytes_run": started(STALL)}, True, DueReason.STALLED, None, id="stalled at the stall age"),
        pytest.param(
            {"bytes_run": started(3 * HOUR), "last_ended": NOW - 4 * HOUR},
            True,
            DueReason.STALLED,
            None,
            id="stalled, our run before it",
        ),
        pytest.param({"bytes_run": BytesRun(None, None)}, True, DueReason.MANUAL, None, id="a run without times"),
    ],
)
def test_may_push(
    facts: dict[str, object], due: bool, reason: DueReason | NotDueReason, until: datetime | None
) -> None:
    decision = may_push(replace(FACTS, **facts))  # type: ignore[arg-type]
    assert (decision.due, decision.reason, decision.until) == (due, reason, until)


def test_the_rules_package_does_no_io_and_reads_no_clock() -> None:
    forbidden = (
        *("kat_scheduler.clients", "kat_scheduler.storage", "kat_scheduler.dispatch"),
        *("sqlalchemy", "redis", "kombu", "celery", "httpx", "requests", "time", "kat_scheduler.settings"),
    )
    package = Path(__file__).resolve().parents[2] / "kat_scheduler" / "rules"
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                if call and node.func.attr in ("now", "utcnow", "today"):  # type: ignore[attr-defined]
                    pytest.fail(f"{path.name} reads the clock: {ast.unparse(node)}")
                continue
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name} imports {name}"
