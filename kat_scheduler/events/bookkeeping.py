"""The listener's bookkeeping, done after a batch is acked, on a thread of its own.

What a batch must finish before its events are acked is its claims and publishes: from then on
the work is in the database and on the broker. Two writes remain that only record what happened:
marking the rows published, and giving each new pair its schedule. Doing them on this thread lets
the listener take up the next batch while the database writes them on another core.

Should the process die before they are written, nothing is lost: a row left listed in
``unpublished_tasks`` is published again by the reaper (a duplicate message runs nothing, the start is
conditional), and a pair without a schedule is found by the next planning tick. A failed write is
logged and counted, never raised into the consumer.

:meth:`Bookkeeper.flush` waits for everything submitted; the mutation handler flushes before it
disables schedules, so a disable is never overtaken by an earlier batch's schedule write.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Batches whose bookkeeping may wait at once; a listener further behind than this waits itself.
MAX_PENDING = 4

Job = tuple[str, Callable[[], object]]


class Bookkeeper:
    """Runs submitted writes in order on one background thread (or inline, with ``threaded=False``)."""

    def __init__(self, *, threaded: bool = True, max_pending: int = MAX_PENDING) -> None:
        self.threaded = threaded
        self.failures = 0
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, what: str, write: Callable[[], object]) -> None:
        """Run ``write`` (described as ``what`` in logs) after everything submitted before it."""
        if not self.threaded:
            self._run(what, write)
            return
        self._ensure_thread()
        self._jobs.put((what, write))

    def flush(self) -> None:
        """Wait until every submitted write is done."""
        if self._thread is not None:
            self._jobs.join()

    def close(self) -> None:
        """Finish what was submitted, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._jobs.put(None)
        thread.join()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="bookkeeping", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                self._run(*job)
            finally:
                self._jobs.task_done()

    def _run(self, what: str, write: Callable[[], object]) -> None:
        try:
            write()
        except Exception:
            self.failures += 1
            logger.exception("bookkeeping failed (%s); the reaper and the next tick repair what it left", what)
