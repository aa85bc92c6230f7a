"""A report in one statement: each device's state for a release keeps the state before
its last change (``prev_state``), so the upsert that stores a report also says how the
release's counters change, with no separate read and lock of the old row.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("device_updates", sa.Column("prev_state", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("device_updates", "prev_state")
