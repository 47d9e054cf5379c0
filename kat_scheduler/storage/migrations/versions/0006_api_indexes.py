"""Indexes for the HTTP API: pops in priority order, an organisation's newest tasks and its stats.

``ix_tasks_queued_pop`` (``scheduler_id, band, priority, created_at`` over queued rows only): a pop
(``POST /schedulers/{id}/pop``) walks the queued rows of one scheduler most urgent first and stops
after ``limit`` matches, instead of sorting every queued row of the scheduler on each call. Only
queued rows are in it, so it stays as small as the queue.

``ix_tasks_organisation_created_at``: Rocky's task list (one organisation, newest first, a page
of 50) reads its page from the index instead of sorting the organisation's rows.

``ix_tasks_organisation_modified_at``: ``/tasks/stats`` for one organisation (its tasks modified in
the last 24 hours) reads those rows only, not every row of the organisation (figures in
docs/benchmarks.md).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    op.create_index(
        "ix_tasks_queued_pop",
        "tasks",
        ["scheduler_id", "band", "priority", "created_at"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.create_index("ix_tasks_organisation_created_at", "tasks", ["organisation", "created_at"])
    op.create_index("ix_tasks_organisation_modified_at", "tasks", ["organisation", "modified_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_organisation_modified_at", table_name="tasks")
    op.drop_index("ix_tasks_organisation_created_at", table_name="tasks")
    op.drop_index("ix_tasks_queued_pop", table_name="tasks")
