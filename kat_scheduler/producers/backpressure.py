"""Reading a queue's depth for backpressure; the decision itself is :mod:`kat_scheduler.rules.backpressure`'s.

A depth that cannot be read holds the low bands back (as a deep queue does) and says so: a
warning naming the queue and the error (URLs in it masked), and the :class:`Backpressure` the
producer keeps in its report (``plan --dry-run`` and ``status`` show it).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from kat_scheduler.recording import describe
from kat_scheduler.rules.backpressure import Backpressure, backpressure
from kat_scheduler.settings import masked_url

if TYPE_CHECKING:
    from kat_scheduler.publisher import Publisher

logger = logging.getLogger(__name__)

#: A URL inside an error's text (a client may quote the one it could not reach, password and all).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")


def error_text(exc: BaseException) -> str:
    """One line saying what went wrong, any URL in it with its password masked."""
    return _URL.sub(lambda m: masked_url(m[0]), " ".join(describe(exc).split()))


def read_backpressure(publisher: Publisher, queue: str, *, limit: int, band: int) -> Backpressure:
    """The backpressure on ``queue`` now (over ``limit`` messages: bands up to ``band`` only); an
    unreadable depth holds the low bands back too, logged."""
    try:
        depth = publisher.queue_depth(queue)
    except Exception as exc:  # the broker may be down or struggling: that is no empty queue
        decision = backpressure(queue, None, limit=limit, band=band, error=error_text(exc))
        logger.warning("backpressure: %s", decision.reason)
        return decision
    decision = backpressure(queue, depth, limit=limit, band=band)
    if decision.on:
        logger.warning("backpressure: %s this tick", decision.reason)
    return decision
