"""``object_events.last_event``: what the last batch that handled an object applied to it.

``delete``, or the operation and the scan level (``update:2``). A contested object whose batch
ends with the very event the last batch applied needs no look-up in Octopoes: handling it again
is handling a duplicate of that event.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("object_events") as batch:
        batch.add_column(sa.Column("last_event", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("object_events") as batch:
        batch.drop_column("last_event")
