"""The server at a million devices: per-release report counters, per-release halt policy,
the device inventory, artifacts and trust roots in the database, 64-bit event keys, indexes.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
SHARDS = 16  # as mpseal.fleet.releases.COUNT_SHARDS at the time of this revision
STATES = ("downloaded", "staged", "refused", "booted", "confirmed", "rolled_back", "timed_out")


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "release_counts",
        sa.Column(
            "release_id",
            sa.Integer,
            sa.ForeignKey("releases.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("shard", sa.Integer, primary_key=True),
        *(sa.Column(s, sa.BigInteger, nullable=False, server_default="0") for s in STATES),
    )
    # Counts of what already exists, in shard 0.
    op.execute(
        "INSERT INTO release_counts (release_id, shard, "  # noqa: S608 - STATES: constants
        + ", ".join(STATES)
        + ") SELECT release_id, 0, "
        + ", ".join(f"SUM(CASE WHEN state = '{s}' THEN 1 ELSE 0 END)" for s in STATES)
        + " FROM device_updates GROUP BY release_id"
    )
    with op.batch_alter_table("releases") as b:
        b.add_column(sa.Column("cohort_size", sa.BigInteger, nullable=False, server_default="0"))
        b.add_column(sa.Column("halt_min_attempts", sa.Integer))
        b.add_column(sa.Column("halt_max_failure_ratio", sa.Float))
        b.add_column(sa.Column("halt_min_cohort_share", sa.Float))
    op.create_index("ix_device_updates_state_updated", "device_updates", ["state", "updated_at"])
    op.create_index("ix_certificates_device_id", "certificates", ["device_id"])
    op.create_index("ix_devices_group", "devices", ["group_name", "id"])
    op.create_index("ix_events_at", "events", ["at"])
    if pg:  # SQLite's INTEGER PRIMARY KEY is 64-bit already
        op.alter_column("events", "id", type_=sa.BigInteger)
        op.execute("ALTER SEQUENCE IF EXISTS events_id_seq AS bigint")
    op.create_table(
        "device_status",
        sa.Column(
            "device_id",
            sa.Integer,
            sa.ForeignKey("devices.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("app", sa.String(64)),
        sa.Column("version", sa.String(32)),
        sa.Column("counter", sa.BigInteger),
        sa.Column("channel", sa.String(32)),
        sa.Column("last_check_at", TZ),
        sa.Column("last_report_at", TZ),
        sa.Column("last_event", sa.String(16)),
    )
    op.create_index("ix_device_status_version", "device_status", ["version", "device_id"])
    op.create_index("ix_device_status_last_check", "device_status", ["last_check_at"])
    op.create_table(
        "artifact_blobs",
        sa.Column("file_sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "trust_roots",
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("trust_roots")
    op.drop_table("artifact_blobs")
    op.drop_table("device_status")
    op.drop_index("ix_events_at", "events")
    op.drop_index("ix_devices_group", "devices")
    op.drop_index("ix_certificates_device_id", "certificates")
    op.drop_index("ix_device_updates_state_updated", "device_updates")
    with op.batch_alter_table("releases") as b:
        for c in (
            "halt_min_cohort_share",
            "halt_max_failure_ratio",
            "halt_min_attempts",
            "cohort_size",
        ):
            b.drop_column(c)
    op.drop_table("release_counts")
