"""The cyclic collector is paused while a batch is planned, and always switched back on after."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from kat_scheduler.gcpause import collector_paused


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_the_collector_is_off_inside_and_on_again_after() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_it_is_switched_on_again_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a planning failure")
    assert gc.isenabled()


def test_nested_pauses_end_with_the_outermost() -> None:
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_switched_off_by_the_operator_stays_off() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_the_collector_comes_back_only_when_the_last_thread_leaves() -> None:
    entered = threading.Barrier(2)
    first_left = threading.Event()
    seen_after_first: list[bool] = []

    def first() -> None:
        with collector_paused():
            entered.wait()
        first_left.set()

    def second() -> None:
        with collector_paused():
            entered.wait()
            first_left.wait(5)
            seen_after_first.append(gc.isenabled())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert seen_after_first == [False]
    assert gc.isenabled()
