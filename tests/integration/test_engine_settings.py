"""What every engine does on its backend, whatever the server's or the caller's defaults."""

from __future__ import annotations

import math
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.exc import StatementError

from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.tables import TaskRow, table_of

TASKS = table_of(TaskRow)


def test_a_postgresql_session_reads_times_without_a_zone_as_utc(
    postgres_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGTZ", "Europe/Amsterdam")  # libpq's own default for the session's zone
    engine = make_engine(postgres_uri, pool_size=1)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW timezone")).scalar_one() == "UTC"
            noon = conn.execute(sa.text("SELECT '2026-01-01 12:00'::timestamptz")).scalar_one()
        assert noon.utcoffset().total_seconds() == 0 and noon.hour == 12
    finally:
        engine.dispose()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_json_column_never_stores_what_json_does_not_allow(engine: Engine, value: float) -> None:
    """NaN or Infinity in a task's data is refused when written, on both backends, so no row
    holds JSON that the database's JSON functions cannot read later; nothing is stored."""
    row: dict[str, object] = {
        "id": uuid.uuid4(),
        "scheduler_id": "boefje",
        "type": "boefje",
        "organisation": "org",
        "plugin_id": "nmap",
        "input_ooi": None,
        "hash": "h" * 32,
        "band": 1,
        "priority": 1,
        "status": "queued",
        "data": {"score": value},
        "attempts": 0,
    }
    with pytest.raises(StatementError, match="JSON compliant"), engine.begin() as conn:
        conn.execute(sa.insert(TASKS).values(**row))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(TASKS)).scalar_one() == 0
