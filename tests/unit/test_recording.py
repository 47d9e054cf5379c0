"""Recording producer runs: never in a producer's way, and throttled for the listener."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from kat_scheduler.events.consumer import Rejected
from kat_scheduler.events.recording_handler import RecordingHandler
from kat_scheduler.models.producers import ProducerName, RunOutcome
from kat_scheduler.producers.recording import ThrottledRecorder, recorded_run
from kat_scheduler.storage.producers import ProducerRunStore

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class FakeRuns:
    """Stands in for ProducerRunStore: keeps what it was asked to record, or fails."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.records: list[dict[str, Any]] = []

    def record(self, name: ProducerName, **values: Any) -> None:
        if self.fail:
            raise ConnectionError("database down")
        self.records.append({"name": name, **values})


def store_of(runs: FakeRuns) -> Callable[[], ProducerRunStore]:
    """A store factory handing out ``runs`` (a stand-in, so the type is asserted, not checked)."""
    return lambda: cast(ProducerRunStore, runs)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ticking(start: datetime = T0, step: float = 1.0):
    moments = iter(start + timedelta(seconds=step * n) for n in range(1000))
    return lambda: next(moments)


def test_a_run_that_returns_is_recorded_ok_with_its_summary_and_times() -> None:
    runs = FakeRuns()
    with recorded_run(ProducerName.PLAN_BOEFJES, store_of(runs), clock=ticking()) as run:
        run.summary = {"planning_tasks": 2}
    [record] = runs.records
    assert record["name"] == ProducerName.PLAN_BOEFJES and record["outcome"] == RunOutcome.OK
    assert record["summary"] == {"planning_tasks": 2} and record["error"] is None
    assert (record["started_at"], record["finished_at"]) == (T0, T0 + timedelta(seconds=1))


def test_a_run_that_raises_is_recorded_as_error_and_the_exception_goes_on() -> None:
    runs = FakeRuns()
    with pytest.raises(RuntimeError, match="katalogus down"), recorded_run(ProducerName.REAP, store_of(runs)) as run:
        run.summary = {"organisations": 3}
        raise RuntimeError("katalogus down")
    [record] = runs.records
    assert record["outcome"] == RunOutcome.ERROR and record["error"] == "RuntimeError: katalogus down"
    assert record["summary"] == {"organisations": 3}


def test_a_run_that_failed_in_part_is_recorded_as_error_without_raising() -> None:
    runs = FakeRuns()
    with recorded_run(ProducerName.QUEUE_DUE_SCHEDULES, store_of(runs)) as run:
        run.error = "1 organisation(s) failed: aa: timeout"
    assert runs.records[0]["outcome"] == RunOutcome.ERROR and runs.records[0]["error"].endswith("timeout")


def test_a_failure_to_record_is_logged_and_never_reaches_the_producer(caplog: pytest.LogCaptureFixture) -> None:
    def broken_store() -> ProducerRunStore:
        raise ValueError("no engine")

    with caplog.at_level(logging.WARNING, "kat_scheduler.producers.recording"):
        with recorded_run(ProducerName.REAP, store_of(FakeRuns(fail=True))):
            pass
        with recorded_run(ProducerName.REAP, broken_store):
            pass
    assert [r.getMessage() for r in caplog.records] == [
        "could not record the run of reap: ConnectionError: database down",
        "could not record the run of reap: ValueError: no engine",
    ]


def test_the_listener_records_at_most_once_per_interval_unless_the_outcome_changes() -> None:
    runs, clock = FakeRuns(), Clock()
    recorder = ThrottledRecorder(ProducerName.LISTENER, store_of(runs), min_interval=5, monotonic=clock)
    summaries = []

    def summary() -> dict[str, Any]:
        summaries.append(clock.now)
        return {"queued": len(summaries)}

    def batch(outcome: RunOutcome = RunOutcome.OK) -> bool:
        return recorder.record(started_at=T0, finished_at=T0, outcome=outcome, summary=summary)

    assert batch()
    clock.now = 4.9
    assert not batch()
    assert batch(RunOutcome.ERROR)  # the outcome changed: written at once
    clock.now = 9.8
    assert not batch(RunOutcome.ERROR)
    assert batch()  # back to ok
    clock.now = 14.9
    assert batch()
    assert [r["outcome"] for r in runs.records] == [RunOutcome.OK, RunOutcome.ERROR, RunOutcome.OK, RunOutcome.OK]
    assert summaries == [0.0, 4.9, 9.8, 14.9]  # only built for the runs written


def test_a_recorder_whose_database_is_down_does_not_ask_it_again_for_every_batch() -> None:
    attempts, clock = [], Clock()

    def store() -> ProducerRunStore:
        attempts.append(clock.now)
        return cast(ProducerRunStore, FakeRuns(fail=True))

    recorder = ThrottledRecorder(ProducerName.LISTENER, store, min_interval=5, monotonic=clock)
    for now in (0.0, 1.0, 2.0, 5.0):
        clock.now = now
        assert recorder.record(started_at=T0, finished_at=T0, outcome=RunOutcome.OK, summary=dict) is False
    assert attempts == [0.0, 5.0]


def test_a_recording_handler_passes_the_batch_result_and_errors_through() -> None:
    runs, clock = FakeRuns(), Clock()
    recorder = ThrottledRecorder(ProducerName.LISTENER, store_of(runs), min_interval=5, monotonic=clock)

    def handler(queue: str, events: list[Any]) -> list[Rejected]:
        if events == ["boom"]:
            raise RuntimeError("octopoes down")
        return [Rejected(0, "bad")]

    recording = RecordingHandler(handler, recorder, lambda: {"queued": 1})
    assert recording("raw_file_received", ["x"]) == [Rejected(0, "bad")]
    with pytest.raises(RuntimeError, match="octopoes down"):
        recording("raw_file_received", ["boom"])
    assert [(r["outcome"], r["error"]) for r in runs.records] == [
        (RunOutcome.OK, None),
        (RunOutcome.ERROR, "raw_file_received: RuntimeError: octopoes down"),
    ]


def test_a_recording_handler_whose_database_is_down_still_returns_the_batch_result() -> None:
    recorder = ThrottledRecorder(ProducerName.LISTENER, store_of(FakeRuns(fail=True)))
    recording = RecordingHandler(lambda queue, events: [], recorder, dict)
    assert recording("scan_profile_mutations", [1, 2]) == []
