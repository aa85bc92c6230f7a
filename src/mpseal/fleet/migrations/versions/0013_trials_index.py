"""``device_updates`` keeps only the indexes something reads: its primary key (a device's
releases) and, new, a partial index of the rows in a trial boot (``booted``) by device and
release, for the sweep of overdue trials (``ReleaseStore.sweep_trials``). Gone: the index
of every row's state and time (the sweep was its only reader) and the one of every row's
release and state (read by the recounts that the counters of migration 0003 replaced).

Both held an entry for every device's every release (tens of millions of rows in a large
fleet) and every report wrote one to each. Only a trial boot's report writes one now, and
a report that repeats a device's state changes no indexed column (a heap-only update: no
index entry at all).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TRIAL = "booted"  # TRIAL_STATE (fleet/releases.py)
_WHERE = sa.text(f"state = '{TRIAL}'")


def upgrade() -> None:
    op.drop_index("ix_device_updates_state_updated", table_name="device_updates")
    op.drop_index("ix_device_updates_release_state", table_name="device_updates")
    op.create_index(
        "ix_device_updates_trials",
        "device_updates",
        ["device_id", "release_id"],
        postgresql_where=_WHERE,
        sqlite_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_device_updates_trials", table_name="device_updates")
    op.create_index("ix_device_updates_state_updated", "device_updates", ["state", "updated_at"])
    op.create_index("ix_device_updates_release_state", "device_updates", ["release_id", "state"])
