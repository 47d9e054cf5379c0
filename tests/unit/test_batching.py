"""Requests that arrive while a batch runs wait for the next one, which serves them all at once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kat_scheduler.api.batching import Batcher


class Gate:
    """A ``run`` for a batcher that records each batch and blocks the first until opened."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.first_started = threading.Event()
        self.opened = threading.Event()
        self.fail_on = fail_on

    def run(self, requests: list[int]) -> list[str]:
        self.batches.append(list(requests))
        if len(self.batches) == 1:
            self.first_started.set()
            assert self.opened.wait(10)
        if self.fail_on in requests:
            raise RuntimeError("database gone")
        return [f"answer {r}" for r in requests]


async def wait_until(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)


def test_requests_arriving_during_a_batch_are_run_together_in_the_next_and_each_gets_its_own_answer():
    gate = Gate()

    async def scenario() -> list[str]:
        batcher: Batcher[int, str] = Batcher(gate.run, most=10)
        first = asyncio.create_task(batcher.submit(1))
        await wait_until(gate.first_started)
        waiting = [asyncio.create_task(batcher.submit(n)) for n in (2, 3, 4)]
        await asyncio.sleep(0)  # they are queued behind the running batch
        gate.opened.set()
        return await asyncio.gather(first, *waiting)

    answers = asyncio.run(scenario())

    assert answers == ["answer 1", "answer 2", "answer 3", "answer 4"]
    assert gate.batches == [[1], [2, 3, 4]]


def test_a_batch_holds_requests_up_to_its_weight_and_the_rest_go_in_the_next():
    gate = Gate()

    async def scenario() -> None:
        batcher: Batcher[int, str] = Batcher(gate.run, most=5, weight=lambda n: n)
        first = asyncio.create_task(batcher.submit(1))
        await wait_until(gate.first_started)
        waiting = [asyncio.create_task(batcher.submit(n)) for n in (2, 3, 4, 9)]
        await asyncio.sleep(0)
        gate.opened.set()
        await asyncio.gather(first, *waiting)

    asyncio.run(scenario())

    assert gate.batches == [[1], [2, 3], [4], [9]]  # 9 alone: heavier than a batch, run on its own


def test_the_result_of_a_request_whose_client_went_away_during_its_batch_is_handed_to_lost():
    gate = Gate()
    lost: list[list[str]] = []

    async def scenario() -> str:
        batcher: Batcher[int, str] = Batcher(gate.run, most=10, lost=lost.append)
        first = asyncio.create_task(batcher.submit(1))
        await wait_until(gate.first_started)
        first.cancel()
        stays = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0)
        gate.opened.set()
        return await stays

    assert asyncio.run(scenario()) == "answer 2"
    assert lost == [["answer 1"]]


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_batch_still_runs():
    gate = Gate(fail_on=2)

    async def scenario() -> tuple[list[BaseException | str], str]:
        batcher: Batcher[int, str] = Batcher(gate.run, most=10)
        first = asyncio.create_task(batcher.submit(1))
        await wait_until(gate.first_started)
        failing = [asyncio.create_task(batcher.submit(n)) for n in (2, 3)]
        await asyncio.sleep(0)
        gate.opened.set()
        results = await asyncio.gather(first, *failing, return_exceptions=True)
        return list(results), await batcher.submit(5)

    results, later = asyncio.run(scenario())

    assert results[0] == "answer 1"
    for failed in results[1:]:
        assert isinstance(failed, RuntimeError) and str(failed) == "database gone"
    assert later == "answer 5"


@pytest.mark.parametrize("concurrent", [1, 3])
def test_with_nothing_running_a_request_runs_at_once_in_a_batch_of_its_own(concurrent):
    gate = Gate()
    gate.opened.set()

    async def scenario() -> None:
        batcher: Batcher[int, str] = Batcher(gate.run, most=10)
        for n in range(concurrent):
            assert await batcher.submit(n) == f"answer {n}"

    asyncio.run(scenario())

    assert gate.batches == [[n] for n in range(concurrent)]


class Idle:
    """An ``idle`` for a batcher that records each call, and can fail."""

    def __init__(self, events: list[str], fail: bool = False) -> None:
        self.events = events
        self.fail = fail
        self.called = threading.Event()

    def __call__(self) -> None:
        self.events.append("idle")
        self.called.set()
        if self.fail:
            raise RuntimeError("connection gone")

    async def wait(self) -> None:
        await wait_until(self.called)
        self.called.clear()


def test_idle_is_called_once_no_request_waits_and_not_between_batches_that_follow_each_other():
    gate = Gate()
    events: list[str] = []
    idle = Idle(events)

    def run(requests: list[int]) -> list[str]:
        events.append(f"batch {requests}")
        return gate.run(requests)

    async def scenario() -> list[str]:
        batcher: Batcher[int, str] = Batcher(run, most=10, idle=idle)
        first = asyncio.create_task(batcher.submit(1))
        await wait_until(gate.first_started)
        waiting = [asyncio.create_task(batcher.submit(n)) for n in (2, 3)]
        await asyncio.sleep(0)
        gate.opened.set()
        answers = await asyncio.gather(first, *waiting)
        await idle.wait()
        later = await batcher.submit(4)
        await idle.wait()
        return [*answers, later]

    answers = asyncio.run(scenario())

    assert answers == ["answer 1", "answer 2", "answer 3", "answer 4"]
    assert events == ["batch [1]", "batch [2, 3]", "idle", "batch [4]", "idle"]


def test_a_failing_idle_is_logged_and_the_next_request_still_runs(caplog):
    gate = Gate()
    gate.opened.set()
    idle = Idle([], fail=True)

    async def scenario() -> list[str]:
        batcher: Batcher[int, str] = Batcher(gate.run, most=10, idle=idle)
        first = await batcher.submit(1)
        await idle.wait()
        return [first, await batcher.submit(2)]

    assert asyncio.run(scenario()) == ["answer 1", "answer 2"]
    assert "what the batches shared could not be given back" in caplog.text
    assert "connection gone" in caplog.text
