"""Requests of one kind that arrive together, run as one database statement.

Runners pop (and clients push) concurrently, each request asking for little: one task. Run one
by one, every request pays a database round trip, a statement and a hop to a worker thread of
its own. A :class:`Batcher` lets requests that arrive while a statement of their kind is running
wait for the next one, which then serves all of them: one statement, on one worker thread, per
batch. With one request at a time nothing waits (a batch of one runs at once); the busier the
API, the larger the batches, so the round trips per request fall as the load rises.

A batcher lives on the event loop of one API process (requests of other processes never share
its batches) and runs one batch at a time. What a batch decides for each request is the same as
that request alone would have got in its place: the statements are written so (see
:mod:`kat_scheduler.api.pop` and :mod:`kat_scheduler.api.push`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from anyio import to_thread

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    """Runs ``run`` on a worker thread for the requests waiting together, one batch at a time.

    ``run`` gets the batch's requests in the order they arrived and answers one result for each,
    in the same order. A batch holds requests up to ``most`` in ``weight`` (a single request
    heavier than that is a batch on its own). A request whose client went away while its batch
    ran loses its result: ``lost`` gets those results (on a worker thread), to undo them.

    ``idle`` is called (on a worker thread) once a batch has run and no request waits for the
    next: what consecutive batches share (a database connection, say) is given back then, so it
    is held while requests keep coming and not while none come. A request arriving meanwhile
    waits for it to return.
    """

    def __init__(
        self,
        run: Callable[[list[In]], Sequence[Out]],
        *,
        most: int,
        weight: Callable[[In], int] = lambda _: 1,
        lost: Callable[[list[Out]], object] | None = None,
        idle: Callable[[], object] | None = None,
    ) -> None:
        self._run = run
        self._most = most
        self._weight = weight
        self._lost = lost
        self._idle = idle
        self._waiting: deque[tuple[In, asyncio.Future[Out]]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, request: In) -> Out:
        """The result of ``request``, run in the next batch (at once when none is running)."""
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await future

    def _next_batch(self) -> list[tuple[In, asyncio.Future[Out]]]:
        batch: list[tuple[In, asyncio.Future[Out]]] = []
        total = 0
        while self._waiting:
            request, future = self._waiting[0]
            if batch and total + self._weight(request) > self._most:
                break
            self._waiting.popleft()
            if future.done():  # its client went away before it ran
                continue
            batch.append((request, future))
            total += self._weight(request)
        return batch

    async def _drain(self) -> None:
        batch: list[tuple[In, asyncio.Future[Out]]] = []
        try:
            while self._waiting:
                batch = self._next_batch()
                if batch:
                    await self._serve(batch)
                    batch = []
                if not self._waiting and self._idle is not None:
                    try:
                        await to_thread.run_sync(self._idle)
                    except Exception:
                        logger.exception("what the batches shared could not be given back")
        finally:
            self._drainer = None
            # Left over only when the loop stops this task: nobody will run them.
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting.clear()

    async def _serve(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        """Run one batch and answer each of its requests (an exception answers them all)."""
        try:
            results = await to_thread.run_sync(self._run, [request for request, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        lost = []
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                lost.append(result)
            else:
                future.set_result(result)
        if lost and self._lost is not None:
            try:
                await to_thread.run_sync(self._lost, lost)
            except Exception:
                logger.exception("%d result(s) of requests gone could not be undone", len(lost))
