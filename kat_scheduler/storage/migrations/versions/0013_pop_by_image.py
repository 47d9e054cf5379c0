"""Pops by boefje image: the queued tasks of one scheduler per image, most urgent first (PostgreSQL).

The boefje workers pop with their images' filter (``data.boefje.oci_image in [...]``). With only
``ix_tasks_queued_pop`` (most urgent first, the image checked on each row), a pop reads past every
queued task of an image no popper asks for that is more urgent than the ones it takes: as many
rows per pop as such tasks wait at the head of the queue. ``ix_tasks_queued_pop_image``
(``scheduler_id``, the image, ``band, priority, created_at``, queued rows only) lets a pop take the
most urgent tasks of each image asked for straight from the index and merge them
(:meth:`kat_scheduler.storage.task_views.TaskViews.pop_statement`). PostgreSQL only: on SQLite a
pop reads ``ix_tasks_queued_pop`` as before.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(
        "ix_tasks_queued_pop_image",
        "tasks",
        ["scheduler_id", sa.text("(data #>> '{boefje,oci_image}')"), "band", "priority", "created_at"],
        postgresql_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_tasks_queued_pop_image", table_name="tasks")
