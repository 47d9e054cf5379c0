"""Worker nodes' heartbeats, and the markers the reaper leaves in brokers.

A Celery worker node registers one row per life (:meth:`WorkerNodeStore.register`) and beats it
every ``SCHEDULER_WORKER_HEARTBEAT_INTERVAL`` seconds from its main process. The reaper finds the
nodes that stopped beating in two steps, so that a silence it did not watch whole (the database
was down, so nobody could beat) never counts: :meth:`WorkerNodeStore.suspect` marks the nodes
silent for ``SCHEDULER_WORKER_LOST_AFTER``; :meth:`WorkerNodeStore.lost` names those still
silent and suspected for at least ``confirm_after`` (a beat in between clears the suspicion).

Every time here is the database's clock on PostgreSQL (:meth:`WorkerNodeStore.db_now`), so a
worker host whose clock is off never looks silent; SQLite runs on one host anyway.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from kat_scheduler.storage.tables import BrokerMarkerRow, WorkerNodeRow, table_of, utcnow

_NODES = table_of(WorkerNodeRow)
_MARKERS = table_of(BrokerMarkerRow)


@dataclass(frozen=True, slots=True)
class WorkerNode:
    """One life of a worker node: ``name`` is Celery's (``boefjes@host``), ``pid`` its main process."""

    id: uuid.UUID
    name: str
    host: str
    pid: int


class WorkerNodeStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def db_now(self) -> datetime:
        """The database's time on PostgreSQL (one clock for every host); this host's on SQLite."""
        with self.engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                return utcnow()
            now: datetime = conn.execute(select(func.now())).scalar_one()
        return now.astimezone(UTC)

    def register(self, node: WorkerNode, now: datetime | None = None) -> None:
        """Record a node's start (and first beat) at ``now`` (default: :meth:`db_now`)."""
        now = now or self.db_now()
        with self.engine.begin() as conn:
            conn.execute(
                insert(_NODES).values(
                    id=node.id, name=node.name[:255], host=node.host[:255], pid=node.pid, started_at=now, beat_at=now
                )
            )

    def beat(self, node: WorkerNode, now: datetime | None = None) -> None:
        """The node lives at ``now`` (default: :meth:`db_now`): its beat moves on and any suspicion
        is cleared (a row that is gone, pruned after a long silence, is registered again)."""
        now = now or self.db_now()
        values = {"beat_at": now, "suspected_at": None}
        with self.engine.begin() as conn:
            updated = conn.execute(update(_NODES).where(_NODES.c.id == node.id).values(**values)).rowcount
            if updated:
                return
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(_NODES).values(
                id=node.id, name=node.name[:255], host=node.host[:255], pid=node.pid, started_at=now, **values
            )
            conn.execute(stmt.on_conflict_do_update(index_elements=[_NODES.c.id], set_=values))

    def suspect(self, *, now: datetime, silent_for: timedelta) -> int:
        """Mark the nodes whose last beat is older than ``silent_for``; how many were newly marked."""
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    update(_NODES)
                    .where(_NODES.c.suspected_at.is_(None), _NODES.c.beat_at < now - silent_for)
                    .values(suspected_at=now)
                ).rowcount
            )

    def lost(self, *, now: datetime, silent_for: timedelta, confirm_after: timedelta) -> list[uuid.UUID]:
        """Nodes silent for ``silent_for`` and suspected at least ``confirm_after`` ago (by an earlier
        :meth:`suspect`), without a beat since."""
        cols = _NODES.c
        stmt = select(cols.id).where(
            cols.suspected_at.is_not(None),
            cols.suspected_at <= now - confirm_after,
            cols.beat_at < now - silent_for,
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt.order_by(cols.id)).scalars())

    def prune(self, silent_before: datetime) -> int:
        """Forget nodes whose last beat is older than ``silent_before``; how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(delete(_NODES).where(_NODES.c.beat_at < silent_before)).rowcount)

    def get(self, node_id: uuid.UUID) -> WorkerNodeRow | None:
        with Session(self.engine) as session:
            return session.get(WorkerNodeRow, node_id)


class BrokerMarkerStore:
    """The token last left in each broker, by name (see :class:`~kat_scheduler.storage.tables.BrokerMarkerRow`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def token(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(_MARKERS.c.token).where(_MARKERS.c.name == name)).scalar_one_or_none()

    def put(self, name: str, token: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(_MARKERS).values(name=name, token=token, set_at=now)
            conn.execute(
                stmt.on_conflict_do_update(index_elements=[_MARKERS.c.name], set_={"token": token, "set_at": now})
            )
