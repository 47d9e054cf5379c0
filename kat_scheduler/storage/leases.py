"""Leases: a named lock with an expiry, held in the database (beat's singleton, and the worker node
that releases rate-limited tasks: :class:`~kat_scheduler.limiting.release.ReleaseThread`).

``acquire`` is one upsert that succeeds only when the lease is free, expired, or already ours,
so two holders can never both believe they hold it; a crashed holder is replaced once its lease
lapses. Works the same on PostgreSQL and SQLite.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from kat_scheduler.storage.tables import BeatLease, table_of, utcnow

_LEASES = table_of(BeatLease)


class LeaseStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def acquire(self, name: str, holder: str, ttl: float, now: datetime | None = None) -> bool:
        """Take or renew lease ``name`` for ``ttl`` seconds; ``False`` if someone else holds it."""
        now = now or utcnow()
        expires = now + timedelta(seconds=ttl)
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(_LEASES).values(name=name, holder=holder, expires_at=expires, acquired_at=now)
        taken_over = (_LEASES.c.holder != holder) | (_LEASES.c.expires_at < now)
        stmt = insert.on_conflict_do_update(
            index_elements=[_LEASES.c.name],
            set_={
                "holder": insert.excluded.holder,
                "expires_at": insert.excluded.expires_at,
                "acquired_at": case((taken_over, insert.excluded.acquired_at), else_=_LEASES.c.acquired_at),
            },
            where=(_LEASES.c.holder == holder) | (_LEASES.c.expires_at < now),
        ).returning(_LEASES.c.holder)
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    def release(self, name: str, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(_LEASES).where(_LEASES.c.name == name, _LEASES.c.holder == holder))

    def holder(self, name: str, now: datetime | None = None) -> str | None:
        """Who holds ``name`` right now (``None`` if nobody, or the lease lapsed)."""
        now = now or utcnow()
        with self.engine.connect() as conn:
            row = conn.execute(select(_LEASES.c.holder, _LEASES.c.expires_at).where(_LEASES.c.name == name)).first()
        if row is None or row.expires_at < now:
            return None
        return str(row.holder)
