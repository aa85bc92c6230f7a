"""The feed of changed devices says which release entered or left a device's failed
releases (PostgreSQL). A failure report changes only that: a server that holds the device
in memory (server/directory.py) then adds or removes that release where it holds the
device, instead of forgetting the device and looking it up again at its next request. At 5 %
failure reports that lookup was most of what a repeated report cost beyond a check (the
server's event loop: ~210 against ~110 us a report, measured in-process).

A row with ``release_id`` NULL names a device that changed otherwise (as in 0011: looked up
again). A row with a release says whether that release is now among the device's failed
ones (``failed``). Two rows of one device's one release are ordered by ``id``: the later
transaction waited for the earlier one's lock on the ``device_updates`` row, and wrote its
row after that one committed.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_FAILED = "('refused', 'rolled_back')"  # FAILED_EVENTS (fleet/releases.py), as SQL


def _updates_functions(columns: str, inserted: str, updated: str, deleted: str) -> list[str]:
    """The three ``device_updates`` trigger functions (names as 0011 made them), writing
    ``columns`` from the rows the SELECTs name."""
    return [
        "CREATE OR REPLACE FUNCTION mpseal_updates_inserted() RETURNS trigger LANGUAGE plpgsql"  # noqa: S608
        f" AS $$ BEGIN INSERT INTO device_changes ({columns}) SELECT {inserted} FROM new_rows n"
        f" WHERE n.state IN {_FAILED}; RETURN NULL; END $$",
        "CREATE OR REPLACE FUNCTION mpseal_updates_updated() RETURNS trigger LANGUAGE plpgsql"  # noqa: S608
        f" AS $$ BEGIN INSERT INTO device_changes ({columns}) SELECT {updated} FROM new_rows n"
        " JOIN old_rows o ON o.device_id = n.device_id AND o.release_id = n.release_id"
        f" WHERE (o.state IN {_FAILED}) <> (n.state IN {_FAILED}); RETURN NULL; END $$",
        "CREATE OR REPLACE FUNCTION mpseal_updates_deleted() RETURNS trigger LANGUAGE plpgsql"  # noqa: S608
        f" AS $$ BEGIN INSERT INTO device_changes ({columns}) SELECT {deleted} FROM old_rows o"
        f" WHERE o.state IN {_FAILED}; RETURN NULL; END $$",
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: no feed
    op.execute(
        "ALTER TABLE device_changes ADD COLUMN release_id integer, ADD COLUMN failed boolean"
    )
    for sql in _updates_functions(
        "device_id, release_id, failed",
        "n.device_id, n.release_id, true",
        f"n.device_id, n.release_id, n.state IN {_FAILED}",
        "o.device_id, o.release_id, false",
    ):
        op.execute(sql)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for sql in _updates_functions(
        "device_id", "DISTINCT n.device_id", "DISTINCT n.device_id", "DISTINCT o.device_id"
    ):
        op.execute(sql)
    op.execute("ALTER TABLE device_changes DROP COLUMN release_id, DROP COLUMN failed")
