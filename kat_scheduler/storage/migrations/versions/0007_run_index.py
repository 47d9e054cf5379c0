"""The last-run look-up's partial index leaves out rows given up on because a KAT service failed.

Since such rows are no run of their plugin (``reason`` ``service failed: …``), ``last_runs`` filters
on ``reason`` too; the index over finished rows then no longer answered the look-up alone (each
match was checked in the table). The index's condition is now the look-up's, word for word.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISHED = sa.text("status IN ('completed', 'failed')")
# tables.RUN_SQL as it is at this revision (a migration never follows later code).
RUN = sa.text("status IN ('completed', 'failed') AND (reason IS NULL OR reason NOT LIKE 'service failed: %')")


def upgrade() -> None:
    op.create_index("ix_tasks_hash_ended_at_run", "tasks", ["hash", "ended_at"], postgresql_where=RUN, sqlite_where=RUN)
    op.drop_index("ix_tasks_hash_ended_at_finished", table_name="tasks")


def downgrade() -> None:
    op.create_index(
        "ix_tasks_hash_ended_at_finished",
        "tasks",
        ["hash", "ended_at"],
        postgresql_where=FINISHED,
        sqlite_where=FINISHED,
    )
    op.drop_index("ix_tasks_hash_ended_at_run", table_name="tasks")
