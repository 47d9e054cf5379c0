"""Backpressure on the boefje queue for the producers: read the depth, hold bands back.

The decision itself is :mod:`kat_scheduler.rules.backpressure`'s.

A depth that cannot be read holds the low bands back (as a deep queue does) and says so: a
warning naming the queue and the error (URLs in it masked), and the :class:`Backpressure` the
producer keeps in its report (``plan --dry-run`` and ``status`` show it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kat_scheduler.planning.candidates import BOEFJE_QUEUE, Candidate
from kat_scheduler.producers.recording import describe
from kat_scheduler.rules import SkipReason
from kat_scheduler.rules.backpressure import Backpressure, backpressure
from kat_scheduler.settings import masked_text

if TYPE_CHECKING:
    from kat_scheduler.dispatch.publishing import Publisher
    from kat_scheduler.producers.base import ProducerContext
    from kat_scheduler.producers.results import PlanReport

logger = logging.getLogger(__name__)


def error_text(exc: BaseException) -> str:
    """One line saying what went wrong, any URL in it with its password masked."""
    return masked_text(" ".join(describe(exc).split()))


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


def backpressure_for(context: ProducerContext, report: PlanReport) -> int | None:
    """The highest band a run may add to the boefje queue (``None``: any), noted in ``report``.

    With no publisher (a planner that only decides) nothing is read and every band may go."""
    if context.publisher is None:
        return None
    decision = read_backpressure(
        context.publisher,
        BOEFJE_QUEUE,
        limit=context.settings.queue_depth_limit_boefjes,
        band=context.settings.backpressure_band,
    )
    report.queue_depth = decision.depth
    report.queue_depth_error = decision.error if decision.depth is None else None
    report.backpressure = decision.on
    report.max_band = decision.max_band
    return decision.max_band


def keep_bands(candidates: list[Candidate], max_band: int | None, report: PlanReport) -> list[Candidate]:
    """The candidates backpressure lets through; the others are counted as skipped in ``report``."""
    if max_band is None:
        return candidates
    kept = [c for c in candidates if c.rank.band <= max_band]
    report.skipped[SkipReason.BACKPRESSURE] += len(candidates) - len(kept)
    return kept
