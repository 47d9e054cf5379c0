"""A task waiting for its rate limit's window: ``unpublished_tasks.not_before``.

A worker that finds a task's rate limit reached puts the task back (``queued``, no message) and
lists it in ``unpublished_tasks`` with ``not_before``, the time its window opens; a worker node
publishes it again then (:mod:`kat_scheduler.limiting`).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("unpublished_tasks") as batch:
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_unpublished_tasks_not_before",
        "unpublished_tasks",
        ["not_before"],
        postgresql_where=sa.text("not_before IS NOT NULL"),
        sqlite_where=sa.text("not_before IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_unpublished_tasks_not_before", table_name="unpublished_tasks")
    with op.batch_alter_table("unpublished_tasks") as batch:
        batch.drop_column("not_before")
