"""Certificates renewed over the air: each certificate's start and how it was issued, and
an index on expiry (the fleet's expiry report reads it at a million devices).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as b:
        b.add_column(sa.Column("not_before", sa.DateTime(timezone=True)))
        b.add_column(sa.Column("issued_via", sa.String(16)))  # provision | renewal
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])
    op.create_index("ix_certificates_device_not_after", "certificates", ["device_id", "not_after"])


def downgrade() -> None:
    op.drop_index("ix_certificates_device_not_after", "certificates")
    op.drop_index("ix_certificates_not_after", "certificates")
    with op.batch_alter_table("certificates") as b:
        b.drop_column("issued_via")
        b.drop_column("not_before")
