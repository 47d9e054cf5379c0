"""Worker nodes beat in the database; the reaper's marker in the broker is remembered here.

``worker_nodes`` holds one row per life of a Celery worker node, beaten by its main process;
``tasks.node_id`` says which node received or runs a task, so the reaper queues again the tasks
of a node that stopped beating (its main process died) within a minute instead of after the hard
time limit. ``broker_markers`` holds the token the reaper leaves in a Redis broker: a broker
that no longer holds it lost its data, and its backlog is published again at once.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_nodes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("suspected_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_worker_nodes"),
    )
    op.create_table(
        "broker_markers",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_broker_markers"),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("node_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("node_id")
    op.drop_table("broker_markers")
    op.drop_table("worker_nodes")
