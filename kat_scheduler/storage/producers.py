"""The producer-run store: the last run of each producer, one row per name (``producer_runs``).

``record`` is one upsert (PostgreSQL and SQLite alike); a write that is older than the row's
latest run (two listeners, or a slow tick finishing after a newer one) changes nothing.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from kat_scheduler.models.producers import ProducerName, RunOutcome
from kat_scheduler.storage.tables import ProducerRun, table_of

_RUNS = table_of(ProducerRun)
#: Longest error text kept.
MAX_ERROR = 2000


def _jsonable(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` as plain JSON (anything else, such as a datetime, as its string)."""
    plain: dict[str, Any] = json.loads(json.dumps(summary, default=str))
    return plain


class ProducerRunStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        name: ProducerName,
        *,
        started_at: datetime,
        finished_at: datetime,
        outcome: RunOutcome,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        """Record a run of ``name`` as its last one (``host``/``pid`` default to this process)."""
        if error is not None and len(error) > MAX_ERROR:
            error = error[: MAX_ERROR - 3] + "..."
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(_RUNS).values(
            name=name.value,
            started_at=started_at,
            finished_at=finished_at,
            last_ok_at=finished_at if outcome == RunOutcome.OK else None,
            outcome=outcome,
            host=host or socket.gethostname(),
            pid=os.getpid() if pid is None else pid,
            summary=_jsonable(summary or {}),
            error=error,
        )
        stmt = insert.on_conflict_do_update(
            index_elements=[_RUNS.c.name],
            set_={
                "started_at": insert.excluded.started_at,
                "finished_at": insert.excluded.finished_at,
                "last_ok_at": func.coalesce(insert.excluded.last_ok_at, _RUNS.c.last_ok_at),
                "outcome": insert.excluded.outcome,
                "host": insert.excluded.host,
                "pid": insert.excluded.pid,
                "summary": insert.excluded.summary,
                "error": insert.excluded.error,
            },
            where=_RUNS.c.finished_at <= insert.excluded.finished_at,
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def all(self) -> list[ProducerRun]:
        """Every producer's last run, by name."""
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.execute(select(ProducerRun).order_by(ProducerRun.name)).scalars())

    def get(self, name: ProducerName) -> ProducerRun | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(ProducerRun, name.value)
