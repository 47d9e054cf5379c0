"""Claim, then publish: the one way work reaches a queue.

1. **Claim** the tasks in the database (one statement per batch; a hash that is live is lost).
2. **Publish** the claimed ones, in the order given, with their band as broker priority.
3. **Mark** them published. If publishing fails, the rows that were certainly not published
   are un-claimed (deleted, freeing their hashes for the next tick); anything uncertain stays
   listed in ``unpublished_tasks``, for the reaper to publish again.

Row before message, always: a worker that receives a message finds its row.

**Pull delivery.** The tasks of a scheduler named in ``SCHEDULER_PULL_SCHEDULERS`` are claimed the
same way, but never published: their rows stay ``queued`` until one of OpenKAT's own runners pops
them (``POST /schedulers/{id}/pop``). This is decided here, once, for every producer (the tick,
due schedules, the listener, manual pushes): step 2 sends only the other schedulers' messages,
and a held row counts as delivered (it is marked like a published one, so the reaper has nothing
to publish). Ordering is the same on both paths: a pop takes the lowest band first, so a manual
push (band 0) is the most urgent there as on the broker.

**Messages.** :mod:`kat_scheduler.dispatch.messages` is the one message factory: producers hand a
:class:`Dispatchable` made by its ``dispatchable``, and a stored row's message (the reaper's
republishing) is its ``message_for``; both are re-exported here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kat_scheduler.dispatch.messages import Dispatchable, message_for, messages_of
from kat_scheduler.dispatch.publishing import OutgoingMessage, Publisher, PublishError
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.settings import get_settings
from kat_scheduler.storage.tasks import NewTask, TaskStore

__all__ = [
    "Claim",
    "DispatchResult",
    "Dispatchable",
    "Dispatcher",
    "configured_pull_schedulers",
    "message_for",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim won: the tasks (in the order offered) and their messages."""

    offered: int
    tasks: list[NewTask]
    messages: list[OutgoingMessage]

    def without(self, ids: Collection[uuid.UUID]) -> Claim:
        """This claim less the tasks ``ids`` (kept back by the caller: claimed, not to publish now)."""
        if not ids:
            return self
        return Claim(
            self.offered,
            [task for task in self.tasks if task.id not in ids],
            [message for message in self.messages if message.task_id not in ids],
        )


@dataclass(slots=True)
class DispatchResult:
    offered: int = 0
    claimed: int = 0
    #: Delivered: published to Celery, or (pull schedulers) left queued for a pop.
    published: int = 0
    #: Of ``published``, the rows of pull schedulers: queued for a pop, no message sent.
    held: int = 0
    unclaimed: int = 0
    errors: list[str] = field(default_factory=list)
    #: The tasks delivered (published or held), for a caller that marks them itself.
    published_tasks: list[NewTask] = field(default_factory=list)

    def add(self, other: DispatchResult) -> None:
        self.offered += other.offered
        self.claimed += other.claimed
        self.published += other.published
        self.held += other.held
        self.unclaimed += other.unclaimed
        self.errors.extend(other.errors)
        self.published_tasks.extend(other.published_tasks)


def configured_pull_schedulers() -> frozenset[SchedulerId]:
    """``SCHEDULER_PULL_SCHEDULERS`` of this process (the default of :class:`Dispatcher`)."""
    return get_settings().pull_scheduler_ids


class Dispatcher:
    """Claims rows and delivers them: Celery's queues, or (pull schedulers) a pop over HTTP.

    ``pull`` is the set of schedulers whose tasks are held for a pop; by default the process's
    ``SCHEDULER_PULL_SCHEDULERS``. ``publisher`` may be ``None`` for a dispatcher that only holds
    (the report producer): handing it a task to publish is then an error.
    """

    def __init__(
        self,
        store: TaskStore,
        publisher: Publisher | None,
        *,
        pull: Collection[SchedulerId] | None = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.pull: frozenset[SchedulerId] = frozenset(configured_pull_schedulers() if pull is None else pull)

    def pulled(self, task: NewTask) -> bool:
        """Whether ``task`` is held for a pop (its scheduler delivers by pull), not published."""
        return task.scheduler_id in self.pull

    def _publisher(self) -> Publisher:
        if self.publisher is None:
            raise RuntimeError("this dispatcher has no publisher: it can only hold tasks of pull schedulers")
        return self.publisher

    def hold(self, tasks: Sequence[NewTask], now: datetime | None = None) -> DispatchResult:
        """Claim the rows of pull-scheduler tasks that have no Celery message at all (report tasks):
        queued for a pop, never published. ``ValueError`` for a task of a scheduler that is not pulled."""
        pushed = sorted({t.scheduler_id.value for t in tasks if not self.pulled(t)})
        if pushed:
            raise ValueError(f"cannot hold tasks of {', '.join(pushed)}: not in SCHEDULER_PULL_SCHEDULERS")
        result = DispatchResult(offered=len(tasks))
        if not tasks:
            return result
        claimed = self.store.claim(tasks, now=now, unpublished=False)
        result.claimed = result.published = result.held = len(claimed)
        result.published_tasks = claimed
        return result

    def dispatch(
        self,
        items: Sequence[Dispatchable],
        *,
        mark: bool = True,
        messages: Sequence[OutgoingMessage] | None = None,
    ) -> DispatchResult:
        """Claim and publish one batch; never raises for a publish failure (it is reported).

        With ``mark=False`` the caller marks ``result.published_tasks`` published itself (a
        producer does so once after its last publish, to keep bookkeeping off the critical path;
        should it crash in between, the reaper republishes and the claim keeps that harmless).
        ``messages`` are the items' messages from :meth:`prepare`, when made already.
        """
        return self.publish(self.claim(items, messages=messages), mark=mark)

    def prepare(self, items: Sequence[Dispatchable]) -> list[OutgoingMessage]:
        """The messages of ``items``, in order: what :meth:`claim` would make first. Those to publish
        are encoded; those of pull schedulers are left as they are (they are never sent)."""
        messages = messages_of(items)
        sent = [message for item, message in zip(items, messages, strict=True) if not self.pulled(item.task)]
        if not sent:
            return messages
        if len(sent) == len(messages):
            return self._publisher().prepare(messages)
        encoded = iter(self._publisher().prepare(sent))
        return [
            message if self.pulled(item.task) else next(encoded) for item, message in zip(items, messages, strict=True)
        ]

    def claim(self, items: Sequence[Dispatchable], *, messages: Sequence[OutgoingMessage] | None = None) -> Claim:
        """Step 1: claim the rows; the result says which won and what to publish for them.

        The messages are prepared (encoded) first, unless given (from :meth:`prepare`): a message
        that could never be published fails the call before any row is claimed, and publishing
        later only sends.
        """
        if not items:
            return Claim(offered=0, tasks=[], messages=[])
        if messages is None:
            messages = self.prepare(items)
        elif len(messages) != len(items):
            raise ValueError(f"{len(messages)} messages given for {len(items)} items")
        claimed = self.store.claim([item.task for item in items])
        by_id = {message.task_id: message for message in messages}
        return Claim(offered=len(items), tasks=claimed, messages=[by_id[task.id] for task in claimed])

    def unclaim(self, claims: Sequence[Claim]) -> int:
        """Free the rows of ``claims``, none of them sent: their hashes may be claimed again.

        Only rows still listed as unpublished and queued are deleted; the count says how many.
        """
        ids = [task.id for claim in claims for task in claim.tasks]
        return self.store.unclaim(ids) if ids else 0

    def publish(self, claim: Claim, *, mark: bool = True) -> DispatchResult:
        """Step 2: publish what was claimed, in order; un-claim what was certainly not sent.

        Tasks of pull schedulers are not sent: they count as delivered (``held``) as they are.
        """
        result = DispatchResult(offered=claim.offered, claimed=len(claim.tasks))
        if not claim.tasks:
            return result
        held = [task for task in claim.tasks if self.pulled(task)]
        if held:
            result.held = len(held)
            claimed = [task for task in claim.tasks if not self.pulled(task)]
            kept = {task.id for task in claimed}
            messages = [message for message in claim.messages if message.task_id in kept]
        else:
            claimed, messages = claim.tasks, claim.messages
        try:
            if messages:
                self._publisher().publish(messages)
        except PublishError as exc:
            published = set(exc.published)
            unpublished = [t.id for t in claimed if t.id not in published]
            result.unclaimed = self.store.unclaim(unpublished) if exc.certain else 0
            result.published_tasks = [t for t in claim.tasks if t.id in published or self.pulled(t)]
            result.published = len(result.published_tasks)
            if result.published_tasks and mark:
                self.store.mark_published([t.id for t in result.published_tasks])
            result.errors.append(str(exc))
            logger.error(
                "publishing failed after %d of %d messages: %s (%d un-claimed, %d left for the reaper)",
                len(published),
                len(claimed),
                exc,
                result.unclaimed,
                len(unpublished) - result.unclaimed,
            )
            return result
        if mark:
            self.store.mark_published([t.id for t in claim.tasks])
        result.published = len(claim.tasks)
        result.published_tasks = claim.tasks
        return result
