"""Bytes' newest run per pair, as the planning tick saw it, for the event handlers.

An event that makes a pair eligible (a raised scan level) decided from our own history and
schedules only, so a pair that Bytes shows running, or ended inside its grace period, was queued
again. The tick already lists each boefje's history in Bytes in bulk; it now keeps the newest run
of every object in that history here, and the handlers read it by hash. ``bytes_histories`` says
which boefjes' histories a tick has listed, per organisation, so that one never listed (no pair
needed it) is listed by the next tick; ``ix_bytes_runs_unended`` finds the histories to list
again because a run that was going when seen has passed the stall age since.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bytes_runs",
        sa.Column("hash", sa.String(32), nullable=False),
        sa.Column("organisation", sa.String(128), nullable=False),
        sa.Column("plugin_id", sa.String(128), nullable=False),
        sa.Column("input_ooi", sa.String(1024), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_bytes_runs"),
    )
    op.create_index(
        "ix_bytes_runs_unended",
        "bytes_runs",
        ["organisation", "plugin_id"],
        postgresql_where=sa.text("ended_at IS NULL"),
        sqlite_where=sa.text("ended_at IS NULL"),
    )
    op.create_table(
        "bytes_histories",
        sa.Column("organisation", sa.String(128), nullable=False),
        sa.Column("plugin_id", sa.String(128), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("organisation", "plugin_id", name="pk_bytes_histories"),
    )


def downgrade() -> None:
    op.drop_table("bytes_histories")
    op.drop_index("ix_bytes_runs_unended", table_name="bytes_runs")
    op.drop_table("bytes_runs")
