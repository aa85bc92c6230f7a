"""The console: the audit log of admin actions (hash-chained), device log lines, and
release samples (a rollout's counts over time, for its chart).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "device_logs",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "device_id", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("line", sa.Text, nullable=False),
    )
    op.create_index("ix_device_logs_device", "device_logs", ["device_id", "id"])
    op.create_index("ix_device_logs_at", "device_logs", ["at"])
    op.create_table(
        "release_samples",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "release_id",
            sa.Integer,
            sa.ForeignKey("releases.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("offered", sa.BigInteger, nullable=False),
        sa.Column("staged", sa.BigInteger, nullable=False),
        sa.Column("confirmed", sa.BigInteger, nullable=False),
        sa.Column("rolled_back", sa.BigInteger, nullable=False),
        sa.Column("refused", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
    )
    op.create_index("ix_release_samples_release", "release_samples", ["release_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_release_samples_release", "release_samples")
    op.drop_table("release_samples")
    op.drop_index("ix_device_logs_at", "device_logs")
    op.drop_index("ix_device_logs_device", "device_logs")
    op.drop_table("device_logs")
    op.drop_table("audit_log")
