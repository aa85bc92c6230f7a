"""A feed of changed devices (PostgreSQL): every change that can alter what a device's
credentials (its token's hash, its certificates' fingerprints) stand for in the device
lookup adds a row naming the device, written by triggers in the changing transaction,
whoever writes (the server, the CLI, a script). Server processes that keep the fleet's
credentials in memory (server/directory.py) read the rows of transactions they may not
have seen (``xid >= `` the oldest transaction running at their last read) and drop those
devices' credentials; the next request looks the device up again.

What is logged: a device that was active changed or went; a certificate that was valid
changed or went; a device's failed releases changed (a ``device_updates`` row entered or
left a failed state). New devices, tokens and certificates are not: a credential the
server does not hold is looked up anyway. One row a change, no lookups: a failure report
costs the database one more row.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_FAILED = "('refused', 'rolled_back')"  # FAILED_EVENTS (fleet/releases.py), as SQL

_UPGRADE = [
    "CREATE TABLE device_changes ("
    " id bigserial PRIMARY KEY, device_id integer NOT NULL,"
    " xid xid8 NOT NULL DEFAULT pg_current_xact_id(),"
    " at timestamptz NOT NULL DEFAULT clock_timestamp())",  # written, not begun
    "CREATE INDEX ix_device_changes_xid ON device_changes (xid)",
    # rows come in time order: a BRIN index (a few pages, next to nothing a row) for pruning
    "CREATE INDEX ix_device_changes_at ON device_changes USING brin (at)",
    # devices: an active one changed (state, group, board, token...) or went.
    "CREATE FUNCTION mpseal_devices_changed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " INSERT INTO device_changes (device_id) SELECT o.id FROM old_rows o"
    " WHERE o.state = 'active'; RETURN NULL; END $$",
    # certificates: a valid one changed (revoked, superseded) or went.
    "CREATE FUNCTION mpseal_certificates_changed() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN INSERT INTO device_changes (device_id) SELECT o.device_id FROM old_rows o"
    " WHERE o.status = 'valid' AND o.device_id IS NOT NULL; RETURN NULL; END $$",
    # device_updates: a device's failed releases changed.
    "CREATE FUNCTION mpseal_updates_inserted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"  # noqa: S608
    " INSERT INTO device_changes (device_id) SELECT DISTINCT n.device_id FROM new_rows n"
    f" WHERE n.state IN {_FAILED}; RETURN NULL; END $$",
    "CREATE FUNCTION mpseal_updates_updated() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"  # noqa: S608
    " INSERT INTO device_changes (device_id) SELECT DISTINCT n.device_id FROM new_rows n"
    " JOIN old_rows o ON o.device_id = n.device_id AND o.release_id = n.release_id"
    f" WHERE (o.state IN {_FAILED}) <> (n.state IN {_FAILED}); RETURN NULL; END $$",
    "CREATE FUNCTION mpseal_updates_deleted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"  # noqa: S608
    " INSERT INTO device_changes (device_id) SELECT DISTINCT o.device_id FROM old_rows o"
    f" WHERE o.state IN {_FAILED}; RETURN NULL; END $$",
]
# (table, event, function, transition tables): one trigger per event (PostgreSQL allows
# transition tables only on single-event triggers), once per statement.
_TRIGGERS = [
    ("devices", "UPDATE", "mpseal_devices_changed", "OLD TABLE AS old_rows"),
    ("devices", "DELETE", "mpseal_devices_changed", "OLD TABLE AS old_rows"),
    ("certificates", "UPDATE", "mpseal_certificates_changed", "OLD TABLE AS old_rows"),
    ("certificates", "DELETE", "mpseal_certificates_changed", "OLD TABLE AS old_rows"),
    ("device_updates", "INSERT", "mpseal_updates_inserted", "NEW TABLE AS new_rows"),
    (
        "device_updates",
        "UPDATE",
        "mpseal_updates_updated",
        "OLD TABLE AS old_rows NEW TABLE AS new_rows",
    ),
    ("device_updates", "DELETE", "mpseal_updates_deleted", "OLD TABLE AS old_rows"),
]
_FUNCTIONS = [
    "mpseal_devices_changed",
    "mpseal_certificates_changed",
    "mpseal_updates_inserted",
    "mpseal_updates_updated",
    "mpseal_updates_deleted",
]


def _trigger_name(table: str, event: str) -> str:
    return f"mpseal_{table}_{event.lower()}_changes"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: servers look every device up (no in-memory directory)
    for sql in _UPGRADE:
        op.execute(sql)
    for table, event, function, referencing in _TRIGGERS:
        op.execute(
            f"CREATE TRIGGER {_trigger_name(table, event)} AFTER {event} ON {table}"
            f" REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, event, _, _ in _TRIGGERS:
        op.execute(f"DROP TRIGGER {_trigger_name(table, event)} ON {table}")
    for function in _FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}()")
    op.execute("DROP TABLE device_changes")
