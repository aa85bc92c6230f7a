"""Delta updates: the deltas made at publish time from releases devices run.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_deltas",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "release_id",
            sa.Integer,
            sa.ForeignKey("releases.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("from_version", sa.String(32), nullable=False),
        sa.Column("from_file_sha256", sa.String(64), nullable=False),
        sa.Column("delta_sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("release_id", "from_version", name="uq_release_delta"),
    )
    op.create_index("ix_release_deltas_release_id", "release_deltas", ["release_id"])


def downgrade() -> None:
    op.drop_index("ix_release_deltas_release_id", "release_deltas")
    op.drop_table("release_deltas")
