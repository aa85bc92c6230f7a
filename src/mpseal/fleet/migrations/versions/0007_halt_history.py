"""Resuming a release after an automatic halt: each halt kept with its reason and who
resumed it and why (release_halts), and the counts a resumed release's halt starts
from (releases.halt_base: the devices that had finished with it when it was resumed).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("releases") as b:
        b.add_column(sa.Column("halt_base", sa.Text))
    op.create_table(
        "release_halts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "release_id",
            sa.Integer,
            sa.ForeignKey("releases.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("halted_at", TZ, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("resumed_at", TZ),
        sa.Column("resumed_by", sa.String(64)),
        sa.Column("resume_reason", sa.Text),
    )
    op.create_index("ix_release_halts_release", "release_halts", ["release_id", "id"])
    # The releases halted before this revision: their halt, as the release row has it.
    op.execute(
        "INSERT INTO release_halts (release_id, halted_at, reason) "
        "SELECT id, updated_at, COALESCE(halt_reason, '') FROM releases WHERE state = 'halted'"
    )


def downgrade() -> None:
    op.drop_index("ix_release_halts_release", "release_halts")
    op.drop_table("release_halts")
    with op.batch_alter_table("releases") as b:
        b.drop_column("halt_base")
