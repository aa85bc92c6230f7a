"""The update server: releases, pins, device update status, signed timestamps, counters.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("board", sa.String(32), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("counter", sa.BigInteger, nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("percent", sa.Float, nullable=False),
        sa.Column("groups", sa.Text, nullable=False),
        sa.Column("halt_reason", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.UniqueConstraint("channel", "app", "board", "version", name="uq_releases_version"),
    )
    op.create_index("ix_releases_lookup", "releases", ["channel", "app", "board"])
    op.create_table(
        "release_pins",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "release_id",
            sa.Integer,
            sa.ForeignKey("releases.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("hardware_id", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("release_id", "hardware_id", name="uq_release_pins"),
    )
    op.create_index("ix_release_pins_hardware_id", "release_pins", ["hardware_id"])
    op.create_table(
        "device_updates",
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), primary_key=True),
        sa.Column(
            "release_id",
            sa.Integer,
            sa.ForeignKey("releases.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("first_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_device_updates_release_state", "device_updates", ["release_id", "state"])
    op.create_table(
        "timestamps",
        sa.Column("channel", sa.String(32), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("issued", sa.BigInteger, nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
        sa.Column("root_version", sa.Integer, nullable=False),
        sa.Column("targets_digest", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counters, [{"name": "timestamp", "value": 0}])


def downgrade() -> None:
    op.drop_table("counters")
    op.drop_table("timestamps")
    op.drop_table("device_updates")
    op.drop_table("release_pins")
    op.drop_table("releases")
