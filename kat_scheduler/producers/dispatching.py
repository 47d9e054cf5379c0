"""Ranked boefje candidates onto the broker: claimed ahead, published in order, then bookkept.

:class:`ClaimsAhead` claims on a background thread while the caller goes on planning;
:class:`CandidateDispatch` publishes what the claims won, in the order of the candidates, marks
the rows published and gives each pair that had none its schedule. The claim and publish
themselves are :class:`~kat_scheduler.dispatch.dispatcher.Dispatcher`'s, the one path of every producer.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from kat_scheduler.dispatch.dispatcher import Claim, Dispatcher
from kat_scheduler.planning.candidates import Candidate, boefje_dispatchable, new_boefje_schedule
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.tasks import NewTask

if TYPE_CHECKING:
    from kat_scheduler.dispatch.publishing import OutgoingMessage
    from kat_scheduler.producers.base import ProducerContext
    from kat_scheduler.producers.results import PlanReport

logger = logging.getLogger(__name__)


class ClaimsAhead:
    """Claims boefje candidates on a background thread while the caller goes on planning.

    The database does the work of a claim on a core of its own, so claiming one organisation's
    candidates overlaps with planning the next. :meth:`won` waits for the claims submitted since
    it was last called and says which candidates won their hash, with the task and message to
    publish. With no dispatcher (a dry run) nothing is claimed. A claim that fails re-raises from
    :meth:`won`; the planner then publishes what the other claims won before it gives up, and
    whatever is left unpublished is the reaper's, as any claim whose publish did not happen.
    """

    def __init__(self, dispatcher: Dispatcher | None, batch_size: int) -> None:
        self.dispatcher = dispatcher
        self.batch_size = batch_size
        self.offered = 0
        self._futures: list[Future[Claim]] = []
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="claim") if dispatcher is not None else None
        )

    def submit(self, candidates: Sequence[Candidate]) -> None:
        if self._executor is None or not candidates:
            return
        self.offered += len(candidates)
        for start in range(0, len(candidates), self.batch_size):
            self._futures.append(self._executor.submit(self._claim, candidates[start : start + self.batch_size]))

    def _claim(self, candidates: Sequence[Candidate]) -> Claim:
        assert self.dispatcher is not None
        claim = self.dispatcher.claim([boefje_dispatchable(c) for c in candidates])
        # The payloads are in the database now; only ids and hashes are needed until the publish,
        # which waits for every organisation: let them go now (a tenth of a cold tick's memory).
        return Claim(claim.offered, [replace(task, data={}) for task in claim.tasks], claim.messages)

    def won(self, *, strict: bool = True) -> tuple[dict[str, tuple[NewTask, OutgoingMessage]], int]:
        """Every task claimed since the last call and its message, by hash; and how many were offered.

        Waits for those claims. A claim that failed re-raises, or with ``strict=False`` is logged
        and skipped (to publish what the others won before giving up).
        """
        won: dict[str, tuple[NewTask, OutgoingMessage]] = {}
        futures, self._futures = self._futures, []
        offered, self.offered = self.offered, 0
        for future in futures:
            try:
                claim = future.result()
            except Exception as exc:
                if strict:
                    raise
                logger.error("a claim of this tick failed: %s", exc)
                continue
            won.update((task.hash, (task, message)) for task, message in zip(claim.tasks, claim.messages, strict=True))
        return won, offered

    def __enter__(self) -> ClaimsAhead:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


class CandidateDispatch:
    """Claims and publishes boefje candidates for a producer, and does the bookkeeping after."""

    def __init__(self, context: ProducerContext) -> None:
        self.context = context
        self.settings = context.settings

    def dispatcher(self) -> Dispatcher:
        if self.context.publisher is None:
            raise RuntimeError("a planner that queues needs a publisher")
        return Dispatcher(self.context.tasks, self.context.publisher, pull=self.settings.pull_scheduler_ids)

    def claims_ahead(self, *, dry_run: bool) -> ClaimsAhead:
        """Claims in the background as candidates are submitted (none on a dry run)."""
        return ClaimsAhead(None if dry_run else self.dispatcher(), self.settings.batch_size)

    def dispatch(self, candidates: Sequence[Candidate], report: PlanReport, now: datetime) -> None:
        """Claim ``candidates`` and publish the winners in the order given."""
        with ClaimsAhead(self.dispatcher(), self.settings.batch_size) as claims:
            claims.submit(candidates)
            self.publish(candidates, claims, report, now)

    def publish(
        self,
        candidates: Sequence[Candidate],
        claims: ClaimsAhead,
        report: PlanReport,
        now: datetime,
        *,
        strict: bool = True,
    ) -> None:
        """Publish what ``claims`` won, in the order of ``candidates``; then, off the critical path,
        mark the rows published and give each new pair its schedule."""
        started = time.perf_counter()
        dispatcher = self.dispatcher()
        won, offered = claims.won(strict=strict)
        report.dispatch.offered += offered
        size = self.settings.batch_size
        order: list[Candidate] = []
        sent: dict[str, tuple[NewTask, OutgoingMessage]] = {}
        for candidate in candidates:
            # Once per hash: Octopoes' paging may list an object twice, which makes two candidates
            # of one pair, of which one claim won.
            claimed = won.pop(candidate.hash, None)
            if claimed is not None:
                sent[candidate.hash] = claimed
                order.append(candidate)
        published: list[Candidate] = []
        published_ids: list[uuid.UUID] = []
        by_hash = {c.hash: c for c in order}
        for start in range(0, len(order), size):
            chunk = [sent[c.hash] for c in order[start : start + size]]
            claim = Claim(offered=0, tasks=[task for task, _ in chunk], messages=[message for _, message in chunk])
            result = dispatcher.publish(claim, mark=False)
            published.extend(by_hash[t.hash] for t in result.published_tasks)
            published_ids.extend(t.id for t in result.published_tasks)
            result.published_tasks = []
            report.dispatch.add(result)
        report.last_published_at = utcnow()
        report.add_time("dispatch", time.perf_counter() - started)
        started = time.perf_counter()
        for start in range(0, len(published_ids), 5 * size):
            self.context.tasks.mark_published(published_ids[start : start + 5 * size])
        fresh = [
            new_boefje_schedule(c.organisation, c.boefje, c.input_ooi, c.hash, now, self.settings)
            for c in published
            if c.schedule_id is None
        ]
        report.schedules_created += self.context.schedules.add_many(fresh, now=now)
        report.add_time("bookkeeping", time.perf_counter() - started)
