"""A failure report no longer locks its device's row: ``events.device_id`` and
``device_updates.device_id`` lose their foreign keys to ``devices``.

A foreign key is checked for every row written, by a ``SELECT ... FOR KEY SHARE`` of the
referenced row: each report's event and each device's first report of a release locked the
device's row, which writes that row's page (a random one among a million devices' pages)
and a WAL record. Measured on PostgreSQL 15 (200,000 devices, batches of 64 first reports,
two writers at once): 40 - 42 us of the database's CPU a report with both keys, 28 - 30
without them; either one alone saves 1 - 2 us (the other still locks the row).

Nothing is lost by it: devices are never deleted (a device leaves by revocation, its row
stays), and every device id these rows are written with was read from ``devices`` by the
server (its directory or a lookup). ``device_updates.release_id`` keeps its key (a release's
rows go with it; one release row, checked once a batch: 2 - 3 us a report).

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_TABLES = ("events", "device_updates")
# SQLite's foreign keys have no names: the batch copy names them by this convention
_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _device_key(table: str) -> str:
    """The name of ``table``'s foreign key from ``device_id`` to ``devices`` (SQLite's, which
    has none, as the naming convention names it)."""
    for fk in sa.inspect(op.get_bind()).get_foreign_keys(table):
        if fk["referred_table"] == "devices" and fk["constrained_columns"] == ["device_id"]:
            unnamed = {"table_name": table, "column_0_name": "device_id"}
            return fk["name"] or _NAMES["fk"] % {**unnamed, "referred_table_name": "devices"}
    raise RuntimeError(f"{table}: no foreign key from device_id to devices")


def upgrade() -> None:
    for table in _TABLES:
        name = _device_key(table)
        with op.batch_alter_table(table, naming_convention=_NAMES) as batch:
            batch.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table, naming_convention=_NAMES) as batch:
            batch.create_foreign_key(f"{table}_device_id_fkey", "devices", ["device_id"], ["id"])
