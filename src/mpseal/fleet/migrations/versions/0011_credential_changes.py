"""A feed of changed device credentials (PostgreSQL): every change that can alter what a
credential (a device token's hash, a certificate's fingerprint) stands for in the device
lookup adds a row naming that credential, written by triggers in the changing
transaction, whoever writes (the server, the CLI, a script). Server processes that keep
the fleet's credentials in memory (server/directory.py) read the rows of transactions they
may not have seen (``xid >= `` the oldest transaction running at their last read) and drop
those credentials; the next request looks the device up again.

What is logged: a device that was active changed or went (its token, its valid
certificates); a certificate that was valid changed or went; a device's failed releases
changed (a ``device_updates`` row entered or left a failed state). New devices, tokens
and certificates are not: a credential the server does not hold is looked up anyway.

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
    "CREATE TABLE credential_changes ("
    " id bigserial PRIMARY KEY, kind varchar(8) NOT NULL, key varchar(64) NOT NULL,"
    " xid xid8 NOT NULL DEFAULT pg_current_xact_id(),"
    " at timestamptz NOT NULL DEFAULT clock_timestamp())",  # written, not begun
    "CREATE INDEX ix_credential_changes_xid ON credential_changes (xid)",
    # rows come in time order: a BRIN index (a few pages, next to nothing a row) for pruning
    "CREATE INDEX ix_credential_changes_at ON credential_changes USING brin (at)",
    # The keys of these devices: their token if active, their valid certificates.
    "CREATE FUNCTION mpseal_note_devices(ids integer[]) RETURNS void LANGUAGE sql AS $$"
    " INSERT INTO credential_changes (kind, key)"
    " SELECT 'token', d.token_hash FROM devices d"
    " WHERE d.id = ANY(ids) AND d.state = 'active' AND d.token_hash IS NOT NULL"
    " UNION ALL SELECT 'cert', c.fingerprint FROM certificates c"
    " WHERE c.device_id = ANY(ids) AND c.status = 'valid' $$",
    # devices: an active one changed (state, group, board, token...) or went.
    "CREATE FUNCTION mpseal_devices_changed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " INSERT INTO credential_changes (kind, key)"
    " SELECT 'token', o.token_hash FROM old_rows o"
    " WHERE o.state = 'active' AND o.token_hash IS NOT NULL"
    " UNION ALL SELECT 'cert', c.fingerprint FROM certificates c JOIN old_rows o"
    " ON c.device_id = o.id WHERE o.state = 'active' AND c.status = 'valid';"
    " RETURN NULL; END $$",
    # certificates: a valid one changed (revoked, superseded) or went.
    "CREATE FUNCTION mpseal_certificates_changed() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN INSERT INTO credential_changes (kind, key) SELECT 'cert', o.fingerprint"
    " FROM old_rows o WHERE o.status = 'valid'; RETURN NULL; END $$",
    # device_updates: a device's failed releases changed.
    "CREATE FUNCTION mpseal_updates_inserted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"  # noqa: S608
    " PERFORM mpseal_note_devices(ARRAY(SELECT DISTINCT n.device_id FROM new_rows n"
    f" WHERE n.state IN {_FAILED})); RETURN NULL; END $$",
    "CREATE FUNCTION mpseal_updates_updated() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"  # noqa: S608
    " PERFORM mpseal_note_devices(ARRAY(SELECT DISTINCT n.device_id FROM new_rows n"
    " JOIN old_rows o ON o.device_id = n.device_id AND o.release_id = n.release_id"
    f" WHERE (o.state IN {_FAILED}) <> (n.state IN {_FAILED}))); RETURN NULL; END $$",
    "CREATE FUNCTION mpseal_updates_deleted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"  # noqa: S608
    " PERFORM mpseal_note_devices(ARRAY(SELECT DISTINCT o.device_id FROM old_rows o"
    f" WHERE o.state IN {_FAILED})); RETURN NULL; END $$",
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
    op.execute("DROP FUNCTION mpseal_note_devices(integer[])")
    op.execute("DROP TABLE credential_changes")
