"""``kat-scheduler listen`` for :mod:`benchmarks.events`, with the consumer's line per handled batch.

The listener logs ``<queue>: handled N events in S s`` at DEBUG once a batch is acked; this runs
the stock command with that one logger at DEBUG (the rest at ``SCHEDULER_LOG_LEVEL``), so a
benchmark running several listener processes on one queue can tell from their logs when every
event was handled (no sentinel can: which listener gets a message is the broker's choice).

    python -m benchmarks.listen
"""

from __future__ import annotations

import logging

from kat_scheduler.cli import main

if __name__ == "__main__":
    logging.getLogger("kat_scheduler.events.consumer").setLevel(logging.DEBUG)
    main(["listen"])
