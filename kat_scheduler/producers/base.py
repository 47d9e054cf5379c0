"""What every producer is and shares: the :class:`Producer` protocol and its :class:`ProducerContext`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Protocol, TypeVar

from kat_scheduler.planning.candidates import BoefjeIndex
from kat_scheduler.storage.bytes_runs import BytesRunStore

if TYPE_CHECKING:
    from kat_scheduler.clients import KATClients
    from kat_scheduler.dispatch.publishing import Publisher
    from kat_scheduler.settings import Settings
    from kat_scheduler.storage.schedules import ScheduleStore
    from kat_scheduler.storage.tasks import TaskStore

ReportT_co = TypeVar("ReportT_co", covariant=True)


class Producer(Protocol[ReportT_co]):
    """Something that decides on its own what to queue, one run at a time.

    ``name`` says which producer it is (in logs and reports); ``run(now, dry_run)`` is one run at
    ``now`` and returns its report. A dry run decides as a real one would and changes nothing:
    no claim, no message, no schedule written.
    """

    @property
    def name(self) -> str: ...

    def run(self, now: datetime, dry_run: bool = False) -> ReportT_co: ...


@dataclass
class ProducerContext:
    """The services, stores and settings the boefje producers work with (one per process or call)."""

    clients: KATClients
    tasks: TaskStore
    schedules: ScheduleStore
    settings: Settings
    #: The broker; ``None`` for a producer that only decides (a dry run, ``plan --dry-run``).
    publisher: Publisher | None = None

    @cached_property
    def bytes_runs(self) -> BytesRunStore:
        """Bytes' newest runs per pair, as the last tick listed them (the event handlers read them)."""
        return BytesRunStore(self.tasks.engine)

    def organisations(self) -> list[str]:
        """Every organisation Katalogus knows."""
        return list(self.clients.katalogus.organisations())

    def boefje_index(self, organisation: str) -> BoefjeIndex:
        """``organisation``'s boefjes; those Katalogus lists but that do not validate are named, not planned."""
        boefjes = self.clients.katalogus.boefjes(organisation)
        return BoefjeIndex(boefjes, {p.plugin_id: p.reason for p in boefjes.invalid})
