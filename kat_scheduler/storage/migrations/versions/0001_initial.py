"""Initial schema: tasks, schedules, beat_leases.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("status IN ('queued', 'dispatched', 'running')")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SCHEDULER_ID = sa.Enum("boefje", "normalizer", "report", name="schedulerid", native_enum=False, length=16)
STATUS = sa.Enum(
    "pending",
    "queued",
    "dispatched",
    "running",
    "completed",
    "failed",
    "cancelled",
    name="taskstatus",
    native_enum=False,
    length=16,
)


def _ts(name: str, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "beat_leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        _ts("expires_at", nullable=False),
        _ts("acquired_at", nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_beat_leases"),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("scheduler_id", SCHEDULER_ID, nullable=False),
        sa.Column("organisation", sa.String(128), nullable=False),
        sa.Column("plugin_id", sa.String(128), nullable=False),
        sa.Column("input_ooi", sa.String(1024), nullable=True),
        sa.Column("hash", sa.String(32), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("schedule", sa.String(255), nullable=True),
        sa.Column("interval", sa.Integer(), nullable=True),
        _ts("deadline_at"),
        sa.Column("disabled_reason", sa.String(255), nullable=True),
        _ts("created_at", nullable=False),
        _ts("modified_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
        sa.UniqueConstraint("hash", name="uq_schedules_hash"),
    )
    op.create_index(
        "ix_schedules_due",
        "schedules",
        ["deadline_at"],
        postgresql_where=sa.text("enabled"),
        sqlite_where=sa.text("enabled"),
    )
    op.create_index("ix_schedules_organisation_input_ooi", "schedules", ["organisation", "input_ooi"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("scheduler_id", SCHEDULER_ID, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("organisation", sa.String(128), nullable=False),
        sa.Column("plugin_id", sa.String(128), nullable=False),
        sa.Column("input_ooi", sa.String(1024), nullable=True),
        sa.Column("hash", sa.String(32), nullable=False),
        sa.Column("band", sa.SmallInteger(), nullable=False),
        sa.Column("priority", sa.BigInteger(), nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("schedule_id", sa.Uuid(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("modified_at", nullable=False),
        _ts("published_at"),
        _ts("started_at"),
        _ts("ended_at"),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["schedule_id"], ["schedules.id"], name="fk_tasks_schedule_id_schedules", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
    )
    op.create_index("uq_tasks_live_hash", "tasks", ["hash"], unique=True, postgresql_where=LIVE, sqlite_where=LIVE)
    op.create_index("ix_tasks_scheduler_id_status", "tasks", ["scheduler_id", "status"])
    op.create_index("ix_tasks_hash_ended_at", "tasks", ["hash", "ended_at"])
    op.create_index("ix_tasks_organisation_input_ooi", "tasks", ["organisation", "input_ooi"])
    op.create_index("ix_tasks_status_modified_at", "tasks", ["status", "modified_at"])


def downgrade() -> None:
    op.drop_table("tasks")
    op.drop_table("schedules")
    op.drop_table("beat_leases")
