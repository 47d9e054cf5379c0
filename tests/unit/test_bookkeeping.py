"""The listener's bookkeeping runs after the ack, in order, and a failure never stops it."""

from __future__ import annotations

import logging
import threading
import time
from functools import partial

import pytest

from kat_scheduler.events.bookkeeping import Bookkeeper


def _sleep_then_append(seconds: float, done: list[int], n: int) -> None:
    time.sleep(seconds)
    done.append(n)


def test_writes_run_in_the_order_submitted_and_flush_waits_for_them() -> None:
    keeper = Bookkeeper()
    done: list[int] = []
    for n in range(20):
        keeper.submit(f"write {n}", partial(_sleep_then_append, 0.001, done, n))
    keeper.flush()
    assert done == list(range(20))
    keeper.close()


def test_writes_run_on_another_thread_while_the_caller_goes_on() -> None:
    keeper = Bookkeeper()
    release = threading.Event()
    ran_on: list[str] = []

    def slow_write() -> None:
        release.wait(5)
        ran_on.append(threading.current_thread().name)

    keeper.submit("slow", slow_write)
    assert ran_on == []  # submit returned before the write was done
    release.set()
    keeper.close()
    assert ran_on == ["bookkeeping"]


def test_a_failed_write_is_logged_and_counted_and_the_next_one_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    keeper = Bookkeeper()
    done: list[str] = []

    def broken() -> None:
        raise ConnectionError("database went away")

    with caplog.at_level(logging.ERROR):
        keeper.submit("mark published", broken)
        keeper.submit("schedules", lambda: done.append("schedules"))
        keeper.close()
    assert done == ["schedules"]
    assert keeper.failures == 1
    assert "mark published" in caplog.text and "database went away" in caplog.text


def test_close_finishes_what_was_submitted() -> None:
    keeper = Bookkeeper(max_pending=2)
    done: list[int] = []
    for n in range(6):  # more than max_pending: submit waits for room instead of dropping
        keeper.submit("write", partial(_sleep_then_append, 0.005, done, n))
    keeper.close()
    assert done == list(range(6))


def test_inline_bookkeeping_writes_before_submit_returns() -> None:
    keeper = Bookkeeper(threaded=False)
    done: list[str] = []
    keeper.submit("write", lambda: done.append("now"))
    assert done == ["now"]
    keeper.flush()
    keeper.close()
