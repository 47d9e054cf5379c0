"""Tuning Python's cyclic garbage collector for the scheduler's processes.

A planning tick or an event batch allocates hundreds of thousands of short-lived objects that
reference counting frees on its own; almost none form cycles. With the default thresholds the
collector scans the young generation every 700 allocations, and its full collections walk every
object the process made at start-up (modules, the app, caches). :func:`tune_collector`, called once
a process has started, moves what start-up made out of the collector's sight (``gc.freeze()``) and
lets the young generation grow to :data:`YOUNG_THRESHOLD` objects (and the older ones
:data:`OLDER_THRESHOLD` collections) before it is scanned. The
collector stays on: cycles are still collected, only less often (``docs/benchmarks.md`` has the
cost before and after).
"""

from __future__ import annotations

import gc

#: Allocations (minus frees) between two collections of the youngest generation (CPython: 700).
YOUNG_THRESHOLD = 200_000
#: Collections of the generation below between two of the middle and of the oldest (CPython: 10).
OLDER_THRESHOLD = 100


def tune_collector() -> None:
    """Freeze what start-up made and collect the young generation less often; idempotent."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), max(middle, OLDER_THRESHOLD), max(old, OLDER_THRESHOLD))
