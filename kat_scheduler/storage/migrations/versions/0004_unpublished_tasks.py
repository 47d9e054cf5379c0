"""Claimed-but-unpublished tasks are listed in a narrow table of their own.

Marking a task published used to update its ``tasks`` row (``published_at``): a new version of a
row of about 500 bytes and an entry in each of its indexes, for every task, on the hot path of
every producer. A claim now sets ``published_at`` to its own time and lists the task in
``unpublished_tasks``; marking it published deletes that small row. Rows claimed before this
revision (or by an older process still running) keep ``published_at`` NULL until marked, and
the reaper finds those by that, as before; they are not listed here, so that an older process
marking or un-claiming them still finds them as it expects.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "unpublished_tasks",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_unpublished_tasks"),
    )


def downgrade() -> None:
    op.execute(
        "UPDATE tasks SET published_at = NULL WHERE status = 'queued' AND id IN (SELECT task_id FROM unpublished_tasks)"
    )
    op.drop_table("unpublished_tasks")
