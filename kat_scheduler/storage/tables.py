"""SQLAlchemy models of the tables: ``tasks``, ``unpublished_tasks``, ``schedules``, ``beat_leases``,
``producer_runs``, ``bytes_runs``, ``bytes_histories``, ``worker_nodes``, ``broker_markers``.

The unique partial index ``uq_tasks_live_hash`` is the heart of the scheduler: at most one task per
hash may be live (queued, dispatched or running), so a claim is a plain
``INSERT … ON CONFLICT DO NOTHING RETURNING id`` and any number of producers can race safely.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kat_scheduler.models.producers import RunOutcome
from kat_scheduler.models.tasks import LIVE_STATUSES, SchedulerId, TaskStatus

FINISHED_STATUS_SQL = "status IN ('completed', 'failed')"
#: ``tasks.reason`` of a task given up on because a KAT service failed: no run of its plugin.
SERVICE_FAILED_PREFIX = "service failed: "
#: Rows that are runs of their plugin, for grace: finished, and not given up on because a service failed.
RUN_SQL = f"{FINISHED_STATUS_SQL} AND (reason IS NULL OR reason NOT LIKE '{SERVICE_FAILED_PREFIX}%')"
LIVE_STATUS_SQL = "status IN ({})".format(", ".join(f"'{s.value}'" for s in LIVE_STATUSES))
#: The boefje image of a task, as the pop by image indexes and reads it (PostgreSQL).
POP_IMAGE_SQL = "data #>> '{boefje,oci_image}'"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime on every backend (SQLite hands back naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


def _str_enum(enum: type[StrEnum], length: int) -> Enum:
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONType}


def table_of(model: type[Base]) -> Table:
    """The Core table of an ORM model, typed as one."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class TaskRow(Base):
    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    scheduler_id: Mapped[SchedulerId] = mapped_column(_str_enum(SchedulerId, 16))
    type: Mapped[str] = mapped_column(String(32))
    organisation: Mapped[str] = mapped_column(String(128))
    plugin_id: Mapped[str] = mapped_column(String(128))
    input_ooi: Mapped[str | None] = mapped_column(String(1024))
    hash: Mapped[str] = mapped_column(String(32))
    band: Mapped[int] = mapped_column(SmallInteger)
    priority: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[TaskStatus] = mapped_column(_str_enum(TaskStatus, 16))
    data: Mapped[dict[str, Any]]
    reason: Mapped[str | None] = mapped_column(String(64))
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("schedules.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    published_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(255))
    #: The worker node (:class:`WorkerNodeRow`) that received or runs the task, while it is live.
    node_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(
            "uq_tasks_live_hash",
            "hash",
            unique=True,
            postgresql_where=text(LIVE_STATUS_SQL),
            sqlite_where=text(LIVE_STATUS_SQL),
        ),
        Index("ix_tasks_scheduler_id_status", "scheduler_id", "status"),
        Index(
            "ix_tasks_hash_ended_at_run",
            "hash",
            "ended_at",
            postgresql_where=text(RUN_SQL),
            sqlite_where=text(RUN_SQL),
        ),
        Index("ix_tasks_organisation_input_ooi", "organisation", "input_ooi"),
        Index("ix_tasks_status_modified_at", "status", "modified_at"),
        # The API's pop (most urgent queued first), Rocky's task list (an organisation's newest)
        # and an organisation's stats (its tasks modified in the last 24 hours).
        Index(
            "ix_tasks_queued_pop",
            "scheduler_id",
            "band",
            "priority",
            "created_at",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        # A pop by boefje image (PostgreSQL only: migration 0013).
        Index(
            "ix_tasks_queued_pop_image",
            "scheduler_id",
            text(f"({POP_IMAGE_SQL})"),
            "band",
            "priority",
            "created_at",
            postgresql_where=text("status = 'queued'"),
        ).ddl_if(dialect="postgresql"),
        Index("ix_tasks_organisation_created_at", "organisation", "created_at"),
        Index("ix_tasks_organisation_modified_at", "organisation", "modified_at"),
    )


class UnpublishedTask(Base):
    """A claimed task whose message is not known to be on the broker yet.

    A claim inserts the task (its ``published_at`` set to the claim's time, when its message is
    about to be sent) and this row, in one statement; once the message is sent, this row is
    deleted. Marking a task published is then a delete from this narrow table, not an update of
    the wide ``tasks`` row and all its indexes. A row left here (the producer died between claim
    and publish) is how the reaper finds the task to publish it again.
    """

    __tablename__ = "unpublished_tasks"

    task_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    claimed_at: Mapped[datetime]
    #: A task a worker put back because its rate limit was reached: when its window opens. Such a
    #: row's ``claimed_at`` is that time too, so the reaper publishes it only if no worker node
    #: released it by then (:mod:`kat_scheduler.limiting`).
    not_before: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "ix_unpublished_tasks_not_before",
            "not_before",
            postgresql_where=text("not_before IS NOT NULL"),
            sqlite_where=text("not_before IS NOT NULL"),
        ),
    )


class ScheduleRow(Base):
    __tablename__ = "schedules"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    scheduler_id: Mapped[SchedulerId] = mapped_column(_str_enum(SchedulerId, 16))
    organisation: Mapped[str] = mapped_column(String(128))
    plugin_id: Mapped[str] = mapped_column(String(128))
    input_ooi: Mapped[str | None] = mapped_column(String(1024))
    hash: Mapped[str] = mapped_column(String(32), unique=True)
    data: Mapped[dict[str, Any]]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    schedule: Mapped[str | None] = mapped_column(String(255))
    interval: Mapped[int | None] = mapped_column(Integer)
    deadline_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    #: When a boefje descheduled the pair (a raw file tagged ``openkat/deschedule``): the schedule
    #: is disabled and no producer enables it again; ``PATCH /schedules/{id}`` ``enabled: true`` clears it.
    descheduled_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index(
            "ix_schedules_due",
            "deadline_at",
            postgresql_where=text("enabled"),
            sqlite_where=text("enabled"),
        ),
        Index("ix_schedules_organisation_input_ooi", "organisation", "input_ooi"),
    )


class BeatLease(Base):
    """A named lease (``beat``: who may run beat; ``rate-limit-release``: which worker node releases
    rate-limited tasks): the holder renews ``expires_at``; a standby takes over once it lapses."""

    __tablename__ = "beat_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime]
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProducerRun(Base):
    """The last run of each producer (beat's ticks, the event listener): one row per name, upserted.

    ``name`` is a :class:`~kat_scheduler.models.producers.ProducerName` value, stored as plain text so
    that a row written by a newer version (a new producer) never stops an older ``status`` from
    reading the table.
    """

    __tablename__ = "producer_runs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    #: ``finished_at`` of the latest run that ended ``ok`` (``None`` until one did).
    last_ok_at: Mapped[datetime | None]
    outcome: Mapped[RunOutcome] = mapped_column(_str_enum(RunOutcome, 8))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)


class BytesRunRow(Base):
    """Bytes' newest run of one (boefje, object, organisation) pair, as a planning tick last saw it.

    The tick lists each boefje's history in Bytes in bulk (per organisation); it keeps here the
    newest run of every object that history holds, whether the pair was eligible then or not, so
    that an event that makes a pair eligible later knows Bytes' history without asking Bytes.
    ``hash`` is the pair's task hash; ``ended_at`` is ``None`` for a run that had not ended when
    it was seen (``seen_at``, the tick's time).
    """

    __tablename__ = "bytes_runs"

    hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    organisation: Mapped[str] = mapped_column(String(128))
    plugin_id: Mapped[str] = mapped_column(String(128))
    input_ooi: Mapped[str] = mapped_column(String(1024))
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    seen_at: Mapped[datetime]

    __table_args__ = (
        # Runs seen without an end, per organisation: the tick lists a history again once such a
        # run has passed the stall age (few rows: most runs have ended when seen).
        Index(
            "ix_bytes_runs_unended",
            "organisation",
            "plugin_id",
            postgresql_where=text("ended_at IS NULL"),
            sqlite_where=text("ended_at IS NULL"),
        ),
    )


class BytesHistoryRow(Base):
    """When a planning tick last listed a boefje's history in Bytes for an organisation.

    A boefje whose history no tick has listed yet (none of its pairs needed it: no object cleared
    it, or our own history covered every one) is listed by the next tick anyway, so that
    ``bytes_runs`` holds its runs before an event raises an object it has run on.
    """

    __tablename__ = "bytes_histories"

    organisation: Mapped[str] = mapped_column(String(128), primary_key=True)
    plugin_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[datetime]


class WorkerNodeRow(Base):
    """One life of a Celery worker node: from its start to its end, its main process beats here.

    A node restarted under the same name is a new row (``id`` is drawn at each start), so a task of
    the life that died is never covered by the beats of the next. The reaper first suspects a node
    silent for ``SCHEDULER_WORKER_LOST_AFTER`` (``suspected_at``) and counts it lost only when a
    later run finds it still silent; a beat clears the suspicion.
    """

    __tablename__ = "worker_nodes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    #: Celery's node name (``boefjes@host``).
    name: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    beat_at: Mapped[datetime]
    suspected_at: Mapped[datetime | None]


class BrokerMarkerRow(Base):
    """The token the reaper last left in a broker (a Redis key): a broker that no longer holds it
    lost its data (a restart without persistence, a flush), so its messages are gone."""

    __tablename__ = "broker_markers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[str] = mapped_column(String(64))
    set_at: Mapped[datetime]


class ObjectEventRow(Base):
    """The last batch of scan-profile mutations that handled one object, per listener process.

    Several listener processes consume KAT's event queue at once, and KAT's events carry no time
    of their own, so a batch cannot tell from its events whether another listener handled a newer
    event of the same object. A batch registers each of its objects here first (one upsert) and
    keeps the rows locked until its claims are written, so the batches of one object are written
    one after another. ``contested`` says that the row was last written by another listener
    within the reorder window: the batch then takes the object's state from Octopoes instead of
    from its own (possibly older) events. A batch's schedule writes, done after the ack, are kept
    only for the objects no other listener has handled since.
    """

    __tablename__ = "object_events"

    organisation: Mapped[str] = mapped_column(String(128), primary_key=True)
    primary_key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    listener: Mapped[str] = mapped_column(String(64))
    handled_at: Mapped[datetime]
    contested: Mapped[bool] = mapped_column(Boolean)
    #: What that batch applied to the object last: ``delete``, or operation and level (``update:2``).
    last_event: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (Index("ix_object_events_handled_at", "handled_at"),)
