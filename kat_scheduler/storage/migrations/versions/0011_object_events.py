"""``object_events``: per object, the last batch of scan-profile mutations that handled it.

Several listener processes write the batches of one object one after another, and a batch that
finds the object last handled by another listener within the reorder window takes the object's
state from Octopoes (:mod:`kat_scheduler.storage.object_events`).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "object_events",
        sa.Column("organisation", sa.String(128), nullable=False),
        sa.Column("primary_key", sa.String(1024), nullable=False),
        sa.Column("listener", sa.String(64), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("contested", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("organisation", "primary_key", name="pk_object_events"),
    )
    op.create_index("ix_object_events_handled_at", "object_events", ["handled_at"])


def downgrade() -> None:
    op.drop_index("ix_object_events_handled_at", table_name="object_events")
    op.drop_table("object_events")
