"""Claim, then publish: the one way work reaches a queue.

1. **Claim** the tasks in the database (one statement per batch; a hash that is live is lost).
2. **Publish** the claimed ones, in the order given, with their band as broker priority.
3. **Mark** them published. If publishing fails, the rows that were certainly not published
   are un-claimed (deleted, freeing their hashes for the next tick); anything uncertain stays
   listed in ``unpublished_tasks``, for the reaper to publish again.

Row before message, always: a worker that receives a message finds its row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kat_scheduler.storage.tasks import NewTask, TaskStore

if TYPE_CHECKING:
    from kat_scheduler.publisher import OutgoingMessage, Publisher

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Dispatchable:
    """A task to claim and the message that runs it."""

    task: NewTask
    task_name: str
    queue: str
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim won: the tasks (in the order offered) and their messages."""

    offered: int
    tasks: list[NewTask]
    messages: list[OutgoingMessage]


@dataclass(slots=True)
class DispatchResult:
    offered: int = 0
    claimed: int = 0
    published: int = 0
    unclaimed: int = 0
    errors: list[str] = field(default_factory=list)
    published_tasks: list[NewTask] = field(default_factory=list)

    def add(self, other: DispatchResult) -> None:
        self.offered += other.offered
        self.claimed += other.claimed
        self.published += other.published
        self.unclaimed += other.unclaimed
        self.errors.extend(other.errors)
        self.published_tasks.extend(other.published_tasks)


class Dispatcher:
    def __init__(self, store: TaskStore, publisher: Publisher) -> None:
        self.store = store
        self.publisher = publisher

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
        """The messages of ``items``, encoded (in order): what :meth:`claim` would make first."""
        from kat_scheduler.publisher import OutgoingMessage

        return self.publisher.prepare(
            [
                OutgoingMessage(
                    task_id=item.task.id,
                    task_name=item.task_name,
                    queue=item.queue,
                    band=item.task.band,
                    kwargs=item.kwargs,
                )
                for item in items
            ]
        )

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

    def publish(self, claim: Claim, *, mark: bool = True) -> DispatchResult:
        """Step 2: publish what was claimed, in order; un-claim what was certainly not sent."""
        from kat_scheduler.publisher import PublishError

        result = DispatchResult(offered=claim.offered, claimed=len(claim.tasks))
        if not claim.tasks:
            return result
        claimed = claim.tasks
        try:
            self.publisher.publish(claim.messages)
        except PublishError as exc:
            published = set(exc.published)
            unpublished = [t.id for t in claimed if t.id not in published]
            result.unclaimed = self.store.unclaim(unpublished) if exc.certain else 0
            result.published = len(published)
            result.published_tasks = [t for t in claimed if t.id in published]
            if published and mark:
                self.store.mark_published(published)
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
            self.store.mark_published([t.id for t in claimed])
        result.published = len(claimed)
        result.published_tasks = claimed
        return result
