"""History look-ups use a partial index over finished runs.

``last_runs`` asks for the latest end of completed or failed runs per hash; an index over just
those rows stays small and is used even while statistics lag a burst of completions (a full
``(hash, ended_at)`` index was skipped for a scan of every finished row then).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISHED = sa.text("status IN ('completed', 'failed')")


def upgrade() -> None:
    op.drop_index("ix_tasks_hash_ended_at", table_name="tasks")
    op.create_index(
        "ix_tasks_hash_ended_at_finished",
        "tasks",
        ["hash", "ended_at"],
        postgresql_where=FINISHED,
        sqlite_where=FINISHED,
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_hash_ended_at_finished", table_name="tasks")
    op.create_index("ix_tasks_hash_ended_at", "tasks", ["hash", "ended_at"])
