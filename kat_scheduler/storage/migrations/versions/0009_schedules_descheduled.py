"""A schedule remembers that a boefje descheduled it (``schedules.descheduled_at``).

A raw file tagged ``openkat/deschedule`` disables the schedule of its (boefje, object,
organisation) and sets ``descheduled_at``; no producer enables such a schedule again (the tick,
due schedules, events, a worker giving up on a service), only an operator through
``PATCH /schedules/{id}`` (``enabled: true``), which clears it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("descheduled_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("descheduled_at")
