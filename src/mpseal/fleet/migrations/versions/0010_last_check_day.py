"""Check-ins updated in place: the inventory indexes the UTC day of a device's last
check-in (``last_check_day``) instead of its exact time, and PostgreSQL leaves a fifth of
each ``device_status`` page free. A check-in that changes no indexed value (the same
version, the same day) is then a heap-only update, with no index entries written: 23 of
a device's 24 hourly check-ins a day. The exact time stays in ``last_check_at``; the
inventory's "last seen" filters narrow by the day, then by the time.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    op.add_column("device_status", sa.Column("last_check_day", sa.Integer, nullable=True))
    op.execute(
        "UPDATE device_status SET last_check_day = "
        "floor(extract(epoch FROM last_check_at) / 86400)::integer "
        "WHERE last_check_at IS NOT NULL"
        if pg
        else "UPDATE device_status SET last_check_day = "
        "CAST(julianday(last_check_at) - 2440587.5 AS INTEGER) WHERE last_check_at IS NOT NULL"
    )
    op.drop_index("ix_device_status_last_check", table_name="device_status")
    op.create_index("ix_device_status_last_check_day", "device_status", ["last_check_day"])
    if pg:
        op.execute("ALTER TABLE device_status SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE device_status RESET (fillfactor)")
    op.drop_index("ix_device_status_last_check_day", table_name="device_status")
    op.create_index("ix_device_status_last_check", "device_status", ["last_check_at"])
    op.drop_column("device_status", "last_check_day")
