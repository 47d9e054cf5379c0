"""Pausing Python's cyclic garbage collector while a producer plans a batch.

A planning tick allocates hundreds of thousands of short-lived objects (parsed objects, pairs,
candidates, rows, messages) that refcounting frees on its own; almost none form cycles. The
cyclic collector does not know that: every 700 allocations it scans the young generation, and
its full collections walk the whole heap, which during a tick is large. Measured on the
10 × 10k × 10 benchmark world, the collector took about a third of the scheduler's CPU in a cold
tick (see ``docs/benchmarks.md``).

:func:`collector_paused` switches automatic collection off for the duration of a batch and
back on afterwards, so the (few) cycles made in a batch are collected by the next automatic run.
It nests and is safe across threads: the collector is switched on again only when the last
holder leaves, and only if it was on when the first one came in.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Automatic cyclic garbage collection is off inside the block (reference counting is not)."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()
