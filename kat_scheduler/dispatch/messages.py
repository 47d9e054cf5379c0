"""The one message factory: what runs a task, from the task (a :class:`NewTask` or a stored row).

A boefje task runs as ``kat.boefje.run`` on the ``boefjes`` queue, a normalizer task as
``kat.normalizer.run`` on ``normalizers``; the kwargs are :mod:`kat_scheduler.rules.payloads`'
(identifiers only: what Flower shows); the broker priority comes from the task's band. Every
path builds its messages here: the producers (tick, due schedules, manual push), the event
handlers, the API's push, the reaper's republishing and the rate limits' release. So a message
republished from its row is the one its producer sent.

Cheap on purpose (the tick builds tens of thousands per run): plain attribute reads and one small
dict per message, no validation, no copy of the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from kat_scheduler.dispatch.publishing import OutgoingMessage
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.queues import Queue, TaskName
from kat_scheduler.rules.payloads import boefje_message_kwargs, normalizer_message_kwargs
from kat_scheduler.storage.tasks import NewTask

BOEFJE_TASK = TaskName.BOEFJE_RUN.value
BOEFJE_QUEUE = Queue.BOEFJES.value
NORMALIZER_TASK = TaskName.NORMALIZER_RUN.value
NORMALIZER_QUEUE = Queue.NORMALIZERS.value


class TaskLike(Protocol):
    """What a message is made from: a :class:`NewTask` or a row of ``tasks``."""

    @property
    def id(self) -> Any: ...
    @property
    def scheduler_id(self) -> Any: ...
    @property
    def organisation(self) -> str: ...
    @property
    def plugin_id(self) -> str: ...
    @property
    def input_ooi(self) -> str | None: ...
    @property
    def band(self) -> int: ...
    @property
    def data(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Dispatchable:
    """A task to claim and the message that runs it (built by :func:`dispatchable`)."""

    task: NewTask
    task_name: str
    queue: str
    kwargs: dict[str, Any]


def raw_data_id(data: Any) -> str:
    """The raw file a normalizer task's JSON (``data``) runs on."""
    return str(data.get("raw_data", {}).get("id"))


def _parts(task: TaskLike, raw_id: str | None) -> tuple[str, str, dict[str, Any]]:
    """The task name, queue and kwargs of ``task`` (``raw_id``: a normalizer's raw file, when the
    caller has it at hand; else read from the task's JSON)."""
    if task.scheduler_id == SchedulerId.NORMALIZER:
        raw = raw_data_id(task.data) if raw_id is None else raw_id
        return NORMALIZER_TASK, NORMALIZER_QUEUE, normalizer_message_kwargs(task.organisation, task.plugin_id, raw)
    return BOEFJE_TASK, BOEFJE_QUEUE, boefje_message_kwargs(task.organisation, task.plugin_id, task.input_ooi)


def dispatchable(task: NewTask, *, raw_id: str | None = None) -> Dispatchable:
    """``task`` and the message that runs it, for the dispatcher to claim and publish."""
    if task.scheduler_id != SchedulerId.NORMALIZER:  # the tick's many: no call more than needed
        return Dispatchable(
            task, BOEFJE_TASK, BOEFJE_QUEUE, boefje_message_kwargs(task.organisation, task.plugin_id, task.input_ooi)
        )
    return Dispatchable(task, *_parts(task, raw_id))


def message_of(item: Dispatchable) -> OutgoingMessage:
    """The message of ``item``."""
    return OutgoingMessage(item.task.id, item.task_name, item.queue, item.task.band, item.kwargs)


def messages_of(items: Sequence[Dispatchable]) -> list[OutgoingMessage]:
    """The messages of ``items``, in order (what :meth:`Dispatcher.prepare` encodes; one loop, no
    call per message)."""
    return [OutgoingMessage(i.task.id, i.task_name, i.queue, i.task.band, i.kwargs) for i in items]


def message_for(row: TaskLike, eta: datetime | None = None) -> OutgoingMessage:
    """The message that runs a task row (the same its producer sent); ``eta``: not before then
    (the rate limits' release, for a window about to open: :attr:`OutgoingMessage.eta`)."""
    name, queue, kwargs = _parts(row, None)
    return OutgoingMessage(row.id, name, queue, row.band, kwargs, eta=eta)
