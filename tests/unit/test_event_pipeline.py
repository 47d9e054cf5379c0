"""The listener's stage threads: jobs run one after the other, in order, and outlive a failing job."""

import threading

import pytest

from kat_scheduler.events.consumer import _SerialWorker


def test_jobs_run_one_after_the_other_in_the_order_given_on_one_thread() -> None:
    worker = _SerialWorker("test-stage")
    ran: list[tuple[int, str]] = []
    done = threading.Event()
    for n in range(50):
        worker.submit(lambda n=n: ran.append((n, threading.current_thread().name)))
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
