"""The listener's stages: when a batch may start, and threads that run jobs in order and outlive a failure."""

import threading
from collections import deque
from concurrent.futures import Future
from functools import partial

import pytest

from kat_scheduler.events.consumer import PIPELINE_DEPTH, _InFlight, _may_start, _SerialWorker


def test_jobs_run_one_after_the_other_in_the_order_given_on_one_thread() -> None:
    worker = _SerialWorker("test-stage")
    ran: list[tuple[int, str]] = []
    done = threading.Event()

    def record(n: int) -> None:
        ran.append((n, threading.current_thread().name))

    for n in range(50):
        worker.submit(partial(record, n))
    worker.submit(done.set)
    assert done.wait(5)
    assert [n for n, _ in ran] == list(range(50))
    assert {name for _, name in ran} == {"test-stage"}


def test_a_job_that_raises_is_logged_and_the_next_job_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    worker = _SerialWorker("test-stage")
    done = threading.Event()

    def broken() -> None:
        raise RuntimeError("boom")

    worker.submit(broken)
    worker.submit(done.set)
    assert done.wait(5)
    assert any("a job failed outside its batch" in r.getMessage() for r in caplog.records)


def _inflight(planned: bool | None) -> _InFlight:
    event = None if planned is None else threading.Event()
    if event is not None and planned:
        event.set()
    return _InFlight("scan_profile_mutations", [], 1, Future(), 0.0, event)


def test_the_next_batch_is_planned_while_one_is_written_only_when_every_handler_is_staged() -> None:
    assert _may_start(deque(), pipelined=False)
    assert not _may_start(deque([_inflight(True)]), pipelined=False)  # a plain handler: one at a time
    assert _may_start(deque([_inflight(True)]), pipelined=True)
    assert not _may_start(deque([_inflight(False)]), pipelined=True)  # still planning: plans go one by one
    assert not _may_start(deque([_inflight(True)] * PIPELINE_DEPTH), pipelined=True)
