"""Middleware around a producer's run: order of the hooks, failures, timing and recording in ``producer_runs``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from kat_scheduler.models.producers import ProducerName, RunOutcome
from kat_scheduler.producers import DueSchedulesProducer, TickProducer
from kat_scheduler.producers.middleware import Middleware, ProducerRun, Recorded, Timed, run_producer
from kat_scheduler.storage.producers import ProducerRunStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclass
class Report:
    queued: int
    errors: dict[str, str] = field(default_factory=dict)


class FakeProducer:
    """A producer that queues ``queued`` tasks, or raises ``fails``."""

    name = "fake"

    def __init__(self, queued: int = 3, errors: dict[str, str] | None = None, fails: Exception | None = None) -> None:
        self.queued, self.errors, self.fails = queued, errors or {}, fails
        self.runs: list[tuple[datetime, bool]] = []

    def run(self, now: datetime, dry_run: bool = False) -> Report:
        self.runs.append((now, dry_run))
        if self.fails is not None:
            raise self.fails
        return Report(self.queued, self.errors)


class Journal(Middleware):
    def __init__(self, tag: str, calls: list[str]) -> None:
        self.tag, self.calls = tag, calls

    def before_run(self, run: ProducerRun) -> None:
        self.calls.append(f"{self.tag}.before")

    def after_run(self, run: ProducerRun, report: Any) -> None:
        self.calls.append(f"{self.tag}.after:{report.queued}")

    def after_failure(self, run: ProducerRun, exc: BaseException) -> None:
        self.calls.append(f"{self.tag}.failed:{exc}")


class Broken(Middleware):
    def before_run(self, run: ProducerRun) -> None:
        raise RuntimeError("middleware bug")


def test_hooks_run_in_order_before_and_in_reverse_after() -> None:
    calls: list[str] = []
    report = run_producer(FakeProducer(), NOW, middleware=[Journal("a", calls), Journal("b", calls)])
    assert report.queued == 3
    assert calls == ["a.before", "b.before", "b.after:3", "a.after:3"]


def test_a_failing_run_is_seen_by_every_middleware_and_raised_as_it_was() -> None:
    calls: list[str] = []
    with pytest.raises(ValueError, match="octopoes down"):
        run_producer(FakeProducer(fails=ValueError("octopoes down")), NOW, middleware=[Journal("a", calls)])
    assert calls == ["a.before", "a.failed:octopoes down"]


def test_a_middleware_that_raises_is_logged_and_the_run_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer()
    calls: list[str] = []
    assert run_producer(producer, NOW, middleware=[Broken(), Journal("a", calls)]).queued == 3
    assert producer.runs == [(NOW, False)] and calls == ["a.before", "a.after:3"]
    assert "middleware bug" in caplog.text


def test_timed_logs_each_run_with_its_producer_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kat_scheduler.producers.middleware"):
        run_producer(FakeProducer(), NOW, middleware=[Timed()])
    [record] = caplog.records
    assert record.levelno == logging.INFO and record.getMessage().startswith("fake ran in ")


def recorded(engine: Engine) -> Recorded:
    return Recorded(
        ProducerName.QUEUE_DUE_SCHEDULES,
        lambda: ProducerRunStore(engine),
        summary=lambda report: {"queued": report.queued},
        errors=lambda report: "; ".join(f"{org}: {e}" for org, e in report.errors.items()) or None,
    )


def test_recorded_keeps_each_real_run_with_its_outcome_and_summary(engine: Engine) -> None:
    runs = ProducerRunStore(engine)
    run_producer(FakeProducer(queued=5), NOW, middleware=[recorded(engine)])
    ok = runs.get(ProducerName.QUEUE_DUE_SCHEDULES)
    assert ok is not None and ok.outcome == RunOutcome.OK and ok.summary == {"queued": 5} and ok.error is None

    run_producer(FakeProducer(queued=1, errors={"org1": "katalogus down"}), NOW, middleware=[recorded(engine)])
    partial = runs.get(ProducerName.QUEUE_DUE_SCHEDULES)
    assert partial is not None and partial.outcome == RunOutcome.ERROR and partial.error == "org1: katalogus down"

    with pytest.raises(RuntimeError):
        run_producer(FakeProducer(fails=RuntimeError("database gone")), NOW, middleware=[recorded(engine)])
    failed = runs.get(ProducerName.QUEUE_DUE_SCHEDULES)
    assert failed is not None and failed.outcome == RunOutcome.ERROR and failed.error == "RuntimeError: database gone"


def test_a_dry_run_is_not_recorded(engine: Engine) -> None:
    run_producer(FakeProducer(), NOW, dry_run=True, middleware=[recorded(engine)])
    assert ProducerRunStore(engine).get(ProducerName.QUEUE_DUE_SCHEDULES) is None


def test_the_planner_runs_each_of_its_producers_through_its_middleware(producers) -> None:
    calls: list[str] = []
    middleware = [Journal("j", calls)]
    run_producer(TickProducer(producers), NOW, dry_run=True, middleware=middleware)
    run_producer(DueSchedulesProducer(producers), NOW, dry_run=True, middleware=middleware)
    assert calls == ["j.before", "j.after:0", "j.before", "j.after:0"]  # dry: nothing queued


class HalfWay:
    """A producer that queues ``queued`` of its tasks, then loses its broker."""

    name = "half-way"

    def __init__(self, queued: int) -> None:
        self.queued = 0
        self.until = queued

    def run(self, now: datetime, dry_run: bool = False) -> Report:
        while self.queued < self.until:
            self.queued += 1
        raise ConnectionError("broker gone")


def test_a_run_that_raises_half_way_is_recorded_with_what_it_had_done(engine: Engine) -> None:
    recorded_half_way = Recorded(
        ProducerName.PLAN_BOEFJES,
        lambda: ProducerRunStore(engine),
        summary=lambda report: {"queued": report.queued},
        so_far=lambda producer: {"queued": producer.queued},
    )
    with pytest.raises(ConnectionError):
        run_producer(HalfWay(queued=2), NOW, middleware=[recorded_half_way])
    run = ProducerRunStore(engine).get(ProducerName.PLAN_BOEFJES)
    assert run is not None and run.outcome == RunOutcome.ERROR and run.error == "ConnectionError: broker gone"
    assert run.summary == {"queued": 2}
