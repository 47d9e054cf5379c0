"""Migrations bring an empty database to a schema identical to the models, on both backends."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from kat_scheduler.settings import load_settings
from kat_scheduler.storage import migrate
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.tables import Base, TaskRow
from kat_scheduler.storage.tasks import never_published_conditions
from tests.conftest import new_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    with new_database("kat_migrations") as uri:
        yield uri


def schema_diff(uri: str) -> list[Any]:
    engine = make_engine(uri)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_builds_the_schema_of_the_models(empty_db: str) -> None:
    assert migrate.current_revision(empty_db) is None
    migrate.upgrade(empty_db)
    assert migrate.is_up_to_date(empty_db)
    assert schema_diff(empty_db) == []


def test_downgrade_to_base_and_up_again_leaves_the_same_schema(empty_db: str) -> None:
    migrate.upgrade(empty_db)
    migrate.downgrade(empty_db, "base")
    engine = make_engine(empty_db)
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("tasks")
    engine.dispose()
    migrate.upgrade(empty_db)
    assert schema_diff(empty_db) == []


def test_upgrading_twice_is_harmless(empty_db: str) -> None:
    migrate.upgrade(empty_db)
    migrate.upgrade(empty_db)
    assert migrate.current_revision(empty_db) == migrate.head_revision()


def test_a_task_claimed_but_not_published_before_0004_is_still_found_by_the_reaper_after_it(empty_db: str) -> None:
    migrate.upgrade(empty_db, "0003")  # the tasks table is as it is now; published_at NULL meant "not sent"
    engine = make_engine(empty_db)
    claimed_at = datetime.now(UTC) - timedelta(hours=1)
    waiting, sent, finished = (
        old_task_row(status=status, published_at=published, created_at=claimed_at)
        for status, published in (("queued", None), ("queued", claimed_at), ("completed", None))
    )
    with engine.begin() as conn:
        conn.execute(sa.insert(TaskRow), [waiting, sent, finished])
    migrate.upgrade(empty_db)
    with engine.connect() as conn:
        stalled = conn.execute(
            sa.select(TaskRow.id).where(
                *never_published_conditions(datetime.now(UTC) - timedelta(seconds=load_settings().unpublished_after))
            )
        )
        assert list(stalled.scalars()) == [waiting["id"]]
    engine.dispose()


def old_task_row(**columns: object) -> dict[str, object]:
    """A ``tasks`` row as revision 0003 had it."""
    return {
        "id": uuid.uuid4(),
        "scheduler_id": "boefje",
        "type": "boefje",
        "organisation": "org",
        "plugin_id": "dns-records",
        "input_ooi": "Hostname|internet|a.nl",
        "hash": uuid.uuid4().hex,
        "band": 1,
        "priority": 0,
        "data": {},
        "modified_at": columns["created_at"],
        "attempts": 0,
        **columns,
    }


def test_an_install_without_its_migration_scripts_is_named_as_broken_and_migrates_nothing(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    incomplete = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, incomplete, ignore=shutil.ignore_patterns("versions"))
    (incomplete / "versions").mkdir()
    monkeypatch.setattr(migrate, "MIGRATIONS", incomplete)
    database = tmp_path / "kat_scheduler.db"
    database.touch()
    for attempt in (migrate.upgrade, migrate.require_schema):
        with pytest.raises(migrate.BrokenInstall, match=r"no migration scripts .* reinstall the package"):
            attempt(f"sqlite:///{database}")
    assert database.stat().st_size == 0
