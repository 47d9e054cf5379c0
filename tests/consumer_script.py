"""An event listener in a process of its own, for tests that SIGKILL it or send it SIGTERM.

    python -m tests.consumer_script QUEUE_URI RECORD_URL [--batch-size N] [--sleep S] [--listener]

Its handler pushes the key of every event it is given onto the Redis list ``started``, sleeps
``--sleep`` seconds, pushes the keys onto ``done`` and returns (after which the consumer acks).
``--listener`` runs :func:`run_listener` (signal handling, default batch sizes) instead of a bare
:class:`EventConsumer`.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import redis

from kat_scheduler.events.consumer import (
    EventConsumer,
    Handler,
    Rejected,
    run_listener,
)
from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS
from kat_scheduler.settings import load_settings

STARTED = "consumer_script:started"
DONE = "consumer_script:done"


def event_key(event: Any) -> str:
    """A mutation's primary key, or a raw file's id."""
    return str(getattr(event, "primary_key", None) or event.raw_data.id)


def recording_handler(record: redis.Redis, sleep: float) -> Handler:
    def handle(queue: str, events: list[Any]) -> list[Rejected]:
        keys = [event_key(event) for event in events]
        record.rpush(STARTED, *keys)
        time.sleep(sleep)
        record.rpush(DONE, *keys)
        return []

    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("queue_uri")
    parser.add_argument("record_url")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--listener", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    handler = recording_handler(redis.Redis.from_url(args.record_url), args.sleep)
    handlers = {SCAN_PROFILE_MUTATIONS: handler, RAW_FILE_RECEIVED: handler}
    if args.listener:
        run_listener(load_settings(queue_uri=args.queue_uri), handlers)
    else:
        EventConsumer(args.queue_uri, handlers, batch_size=args.batch_size).run()


if __name__ == "__main__":
    main()
