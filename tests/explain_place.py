"""The scene of one ``explain`` scenario: a fresh object of an organisation, a boefje on it, and
what sets the scene around the pair (our own runs, queued and live rows, Bytes' runs, a raw file
that deschedules). Shared by tests/integration/test_explain.py and test_explain_decisions.py."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from kat_scheduler.events.deschedule import DESCHEDULE_MIME_TYPE
from kat_scheduler.events.handlers import RawFileHandler
from kat_scheduler.models import RawFileReceived, TaskStatus
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleStore, TaskStore
from kat_scheduler.storage.tasks import NewTask
from kat_scheduler.storage.waiting import WaitingStore
from tests.factories import BoefjeMetaFactory, NewTaskFactory

#: When a rate-limited row's window opens, after the place's ``now``.
WINDOW = timedelta(seconds=40)


@dataclass
class Place:
    """A fresh object of an organisation, a boefje on it, the stores, and what sets the scene.

    ``raw_files``: the handler a raw file that deschedules goes through (only :meth:`deschedule`
    needs one).
    """

    world: World
    org: str
    pk: str
    boefje: str
    tasks: TaskStore
    schedules: ScheduleStore
    now: datetime
    raw_files: RawFileHandler | None = None

    @property
    def hash(self) -> str:
        return boefje_task_hash(self.boefje, self.org, self.pk)

    def run(self, ended: datetime, status: TaskStatus = TaskStatus.COMPLETED) -> uuid.UUID:
        """Our own run of the pair, ended at ``ended`` as ``status``."""
        task: NewTask = NewTaskFactory(organisation=self.org, plugin_id=self.boefje, input_ooi=self.pk)
        assert self.tasks.claim([task], now=ended - timedelta(minutes=5))
        self.tasks.mark_published([task.id])
        assert self.tasks.start(task.id, "worker@test", now=ended - timedelta(minutes=1))
        assert self.tasks.finish(task.id, status, now=ended)
        return task.id

    def queued(self) -> uuid.UUID:
        task: NewTask = NewTaskFactory(organisation=self.org, plugin_id=self.boefje, input_ooi=self.pk, band=5)
        assert self.tasks.claim([task], now=self.now - timedelta(minutes=4))
        return task.id

    def rate_limited(self) -> uuid.UUID:
        """Queued, then put back by a worker that found its group's limit reached (``limiting``)."""
        task_id = self.queued()
        assert WaitingStore(self.tasks.engine).put_back(
            task_id, limit="5/second", group="dns.example", until=self.now + WINDOW, now=self.now
        )
        return task_id

    def served(self) -> uuid.UUID:
        """Live, served by another organisation's run of the boefje on the object (as a worker that
        deduplicates claims it); that run's task id."""
        serving = uuid.uuid4()
        task: NewTask = NewTaskFactory(organisation=self.org, plugin_id=self.boefje, input_ooi=self.pk, band=4)
        assert self.tasks.claim_served(task, serving, "worker@test", self.now - timedelta(seconds=30))
        return serving

    def bytes_run(self, started: datetime, ended: datetime | None) -> None:
        """A run of the pair in Bytes, started at ``started``, ended at ``ended`` (``None``: no end)."""
        self.world.add_boefje_meta(
            BoefjeMetaFactory(
                organization=self.org,
                boefje={"id": self.boefje, "version": None},
                input_ooi=self.pk,
                started_at=started,
                ended_at=ended,
            )
        )

    def deschedule(self) -> uuid.UUID:
        """The boefje ran an hour ago and its raw file said "deschedule"; the raw file's id."""
        assert self.raw_files is not None, "a place that deschedules needs the raw-file handler"
        self.run(self.now - timedelta(hours=1))
        raw_id = uuid.uuid4()
        event = RawFileReceived.model_validate(
            {
                "created_at": self.now.isoformat(),
                "organization": self.org,
                "raw_data": {
                    "id": str(raw_id),
                    "boefje_meta": {
                        "id": str(uuid.uuid4()),
                        "boefje": {"id": self.boefje},
                        "input_ooi": self.pk,
                        "organization": self.org,
                    },
                    "mime_types": [{"value": f"boefje/{self.boefje}"}, {"value": DESCHEDULE_MIME_TYPE}],
                },
            }
        )
        assert self.raw_files("raw_file_received", [event]) == []
        return raw_id
