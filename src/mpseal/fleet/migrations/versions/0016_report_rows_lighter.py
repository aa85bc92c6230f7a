"""The rows a report writes lock no shared row and share no index page:
``device_updates.release_id`` loses its foreign key to ``releases``, and ``events`` its
index on ``at``.

The key was checked for every row a report upserts, by a ``SELECT ... FOR KEY SHARE`` of
the release's row: one row that every report of a release locks, from every server's
batches at once. Nothing is lost by it: releases are never deleted (halted or paused, their
row stays), and every release id a report is stored with was read from ``releases`` by the
server (the channel's releases it offered the device).

``events.at`` was indexed only for the retention's pruning. Events are written with the time
of writing, so every new entry of that B-tree went to its last page, which every writer
locked in turn. The pruning now finds the first event not due by bisecting the ids through
the primary key (ids and times rise together) and deletes the due ones before it
(``ReleaseStore.prune_events``); a BRIN index, tried instead, keeps the widest times a range
of pages ever held, so after the first deletions it would have the pruning read every page.

Measured on PostgreSQL 15 (100,000 devices, first failure reports in batches of 32 from two
writers at once, the backends' CPU from ``/proc``): 44 us of the database a report before,
41 without the key, 35 without the key and the index.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# SQLite's foreign keys have no names: the batch copy names them by this convention
_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _release_key() -> str:
    """The name of ``device_updates``' foreign key to ``releases`` (SQLite's, which has none,
    as the naming convention names it)."""
    for fk in sa.inspect(op.get_bind()).get_foreign_keys("device_updates"):
        if fk["referred_table"] == "releases":
            unnamed = {"table_name": "device_updates", "column_0_name": "release_id"}
            return fk["name"] or _NAMES["fk"] % {**unnamed, "referred_table_name": "releases"}
    raise RuntimeError("device_updates: no foreign key from release_id to releases")


def upgrade() -> None:
    name = _release_key()
    with op.batch_alter_table("device_updates", naming_convention=_NAMES) as batch:
        batch.drop_constraint(name, type_="foreignkey")
    op.drop_index("ix_events_at", "events")


def downgrade() -> None:
    op.create_index("ix_events_at", "events", ["at"])
    with op.batch_alter_table("device_updates", naming_convention=_NAMES) as batch:
        batch.create_foreign_key(
            "device_updates_release_id_fkey",
            "releases",
            ["release_id"],
            ["id"],
            ondelete="CASCADE",
        )
