"""The collector is tuned, never switched off."""

from __future__ import annotations

import gc

from kat_scheduler.runtime.collector import OLDER_THRESHOLD, YOUNG_THRESHOLD, tune_collector


def test_tuning_keeps_the_collector_on_freezes_start_up_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (
            max(before[0], YOUNG_THRESHOLD),
            max(before[1], OLDER_THRESHOLD),
            max(before[2], OLDER_THRESHOLD),
        )
        tune_collector()  # a second call changes nothing
        assert gc.get_threshold()[0] == max(before[0], YOUNG_THRESHOLD)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_cycles_made_after_tuning_are_still_collected() -> None:
    before = gc.get_threshold()
    try:
        tune_collector()

        class Node:
            def __init__(self) -> None:
                self.me = self

        import weakref

        node = Node()
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
