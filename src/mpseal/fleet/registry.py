"""The device registry: which devices exist, their certificates and secrets, and what happened.

SQLite file by default, PostgreSQL by database URL (``postgresql+psycopg://...``).
The schema is created and upgraded by Alembic on open. Revocation here is what
the update server enforces (a revoked device or certificate is refused): the
device's own TLS stack never consults a CRL.

Every SQLAlchemy error is translated at this edge: a constraint violation is a
``UsageError`` (the caller asked for something that conflicts), anything else
a ``TransportError`` (the database could not be used).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mpseal.errors import TransportError, UsageError
from mpseal.fleet.models import (
    Certificate,
    Device,
    DeviceStatus,
    Event,
    Secret,
    epoch_day,
    utcnow,
)

MIGRATIONS = Path(__file__).parent / "migrations"


def migrations_config(conn: Connection) -> Config:
    """Alembic's configuration for the registry's migrations, run on ``conn``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def default_url(folder: Path) -> str:
    return f"sqlite:///{Path(folder).resolve() / 'mpseal.db'}"


@dataclass(frozen=True)
class CertRecord:
    """What the registry keeps of a certificate (parsed by the caller from the DER)."""

    role: str
    subject: str
    serial: str
    fingerprint: str
    not_after: datetime


@dataclass(frozen=True)
class Identity:
    """One device's identity as issued: recorded in one transaction with its certificate."""

    hardware_id: str
    board: str
    cert: CertRecord
    group: str = "default"
    secrets: tuple[tuple[str, str], ...] = ()  # (name, fingerprint)
    token_hash: str | None = None


INVENTORY_PAGE_MAX = 5000


@dataclass(frozen=True)
class InventoryFilter:
    """Which devices an inventory listing shows (every field optional, all must hold)."""

    state: str | None = None  # provisioning | active | revoked
    group: str | None = None
    app: str | None = None
    version: str | None = None  # as last reported in a check
    event: str | None = None  # last update report (downloaded ... rolled_back)
    seen_after: datetime | None = None  # last check-in
    seen_before: datetime | None = None  # includes never seen
    expiring_before: datetime | None = None  # newest valid certificate ends before


IMPORT_FIELDS = (
    "hardware_id",
    "board",
    "group",
    "fingerprint",
    "serial",
    "not_after",
    "subject",
    "token_sha256",
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SERIAL = re.compile(r"[0-9a-f]{1,64}")


@dataclass(frozen=True)
class ImportRow:
    """One identity issued elsewhere, as ``mpseal registry import`` reads it."""

    hardware_id: str
    board: str
    group: str
    fingerprint: str  # SHA-256 of the certificate's DER, hex
    serial: str  # hex
    not_after: datetime
    subject: str
    token_hash: str | None = None  # SHA-256 of the device's bearer token, hex


def parse_import(
    lines: Iterable[str], fmt: str, board: str | None = None, group: str = "default"
) -> Iterator[ImportRow]:
    """Rows of a CSV (header line naming the columns) or JSON-lines file of identities,
    checked one by one; a bad one is a ``FormatError`` naming its line. Columns:
    hardware_id, fingerprint, serial, not_after (ISO 8601), and optionally board, group,
    subject, token_sha256 (``board`` and ``group`` default to the arguments)."""
    from mpseal.errors import FormatError
    from mpseal.formats.names import BOARD, GROUP, HARDWARE_ID

    if fmt == "csv":
        records: Iterable[tuple[int, object]] = (
            (n + 2, r) for n, r in enumerate(csv.DictReader(iter(lines)))
        )
    elif fmt == "jsonl":

        def decoded() -> Iterator[tuple[int, object]]:
            for n, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except ValueError:
                        raise FormatError(f"line {n}: not valid JSON") from None

        records = decoded()
    else:
        raise UsageError(f"import format must be csv or jsonl, not {fmt!r}")
    for n, rec in records:
        if not isinstance(rec, dict):
            raise FormatError(f"line {n}: not an object of named fields")

        def field(
            name: str, required: bool = True, rec: dict[str, Any] = rec, n: int = n
        ) -> str | None:
            value = rec.get(name)
            if value in (None, ""):
                if required:
                    raise FormatError(f"line {n}: {name} is missing")
                return None
            if not isinstance(value, str) or len(value) > 255:
                raise FormatError(f"line {n}: {name} must be a string of up to 255 characters")
            return value.strip()

        hw = field("hardware_id") or ""
        if not HARDWARE_ID.fullmatch(hw):
            raise FormatError(f"line {n}: hardware_id {hw[:40]!r} is not a hardware id")
        b = field("board", required=board is None) or board or ""
        if not BOARD.fullmatch(b):
            raise FormatError(f"line {n}: board {b[:40]!r} is not a board name")
        g = field("group", required=False) or group
        if not GROUP.fullmatch(g):
            raise FormatError(f"line {n}: group {g[:40]!r} is not a group name")
        fp = (field("fingerprint") or "").lower().replace(":", "")
        if not _HEX64.fullmatch(fp):
            raise FormatError(f"line {n}: fingerprint must be the certificate's SHA-256 (hex)")
        serial = (field("serial") or "").lower().replace(":", "")
        if not _SERIAL.fullmatch(serial):
            raise FormatError(f"line {n}: serial must be hex")
        try:
            not_after = datetime.fromisoformat(field("not_after") or "")
        except ValueError:
            raise FormatError(f"line {n}: not_after must be an ISO 8601 date and time") from None
        token = field("token_sha256", required=False)
        if token is not None and not _HEX64.fullmatch(token.lower()):
            raise FormatError(f"line {n}: token_sha256 must be a SHA-256 (hex)")
        yield ImportRow(
            hw,
            b,
            g,
            fp,
            serial,
            not_after if not_after.tzinfo else not_after.replace(tzinfo=UTC),
            field("subject", required=False) or f"CN={hw}",
            token.lower() if token else None,
        )


CONNECT_TIMEOUT = 5  # seconds to connect to PostgreSQL: fail fast when it does not answer


def connect_args(url: object) -> dict[str, object]:
    """Fail fast on a database that does not answer (PostgreSQL): ``CONNECT_TIMEOUT``."""
    return {"connect_timeout": CONNECT_TIMEOUT} if str(url).startswith("postgresql") else {}


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Registry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, upgrade: bool = True) -> Registry:
        """Connect and bring the schema to the newest Alembic revision."""
        try:
            # A server runs up to ``db_concurrency`` (12) database calls at once: a pool that
            # holds that many, so no connection is opened and closed per transaction.
            pool = {"pool_size": 12, "max_overflow": 8} if url.startswith("postgresql") else {}
            engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args(url), **pool)
        except (SQLAlchemyError, ValueError, ImportError) as e:
            raise UsageError(f"cannot use database URL {_safe(url)}: {e}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        reg = cls(engine)
        if upgrade:
            reg.upgrade()
        return reg

    def upgrade(self) -> None:
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":  # several servers may start at once
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(72860011)")
                command.upgrade(migrations_config(conn), "head")
        except SQLAlchemyError as e:
            raise TransportError(f"cannot open the registry database: {_first_line(e)}") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back (nothing written) on any error."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except SAIntegrityError as e:
            s.rollback()
            raise UsageError(f"registry conflict: {_first_line(e.orig or e)}") from None
        except SQLAlchemyError as e:
            s.rollback()
            raise TransportError(f"registry database error: {_first_line(e)}") from None
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    # -- devices -----------------------------------------------------------------

    def record_identities(self, identities: Sequence[Identity], supersede: bool = False) -> None:
        """Record devices with their certificates and secrets, all or nothing.

        Batched: one query finds the devices already known, new ones are inserted
        in bulk (a factory line issues thousands of identities at a time). With
        ``supersede`` the devices' older certificates are revoked in the same
        transaction (a re-provisioned device has exactly one valid identity).
        """
        if not identities:
            return
        with self.session() as s:
            hw_ids = [i.hardware_id for i in identities]
            if len(set(hw_ids)) != len(hw_ids):
                raise UsageError("the same hardware id appears twice in one batch")
            known: dict[str, tuple[int, str]] = {}
            for chunk in _chunks(hw_ids, 500):
                for row in s.execute(
                    select(Device.hardware_id, Device.id, Device.state).where(
                        Device.hardware_id.in_(chunk)
                    )
                ):
                    known[row.hardware_id] = (row.id, row.state)
            now = utcnow()
            revoked = [h for h, (_, state) in known.items() if state == "revoked"]
            if revoked:
                raise UsageError(f"device {revoked[0]} is revoked; it cannot be provisioned again")
            new = [i for i in identities if i.hardware_id not in known]
            if new:
                rows = s.execute(
                    insert(Device).returning(Device.hardware_id, Device.id),
                    [
                        {
                            "hardware_id": i.hardware_id,
                            "board": i.board,
                            "group": i.group,
                            "state": "provisioning",
                            "token_hash": i.token_hash,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for i in new
                    ],
                )
                for hw, dev_id in rows:
                    known[hw] = (dev_id, "provisioning")
            new_ids = {i.hardware_id for i in new}
            old_ids = [known[h][0] for h in hw_ids if h not in new_ids]
            if supersede and old_ids:
                # A re-issued device holds only the new identity, and is "provisioning"
                # again until the new one is confirmed on the device (mark_active).
                for chunk in _chunks(old_ids, 500):
                    s.execute(
                        update(Certificate)
                        .where(Certificate.device_id.in_(chunk))
                        .values(status="revoked")
                    )
                    s.execute(
                        update(Device)
                        .where(Device.id.in_(chunk))
                        .values(state="provisioning", updated_at=now)
                    )
            for i in identities:
                if i.hardware_id in new_ids or not i.token_hash:
                    continue
                s.execute(
                    update(Device)
                    .where(Device.hardware_id == i.hardware_id)
                    .values(token_hash=i.token_hash, updated_at=now)
                )
            s.execute(
                insert(Certificate),
                [
                    {
                        "device_id": known[i.hardware_id][0],
                        "role": i.cert.role,
                        "subject": i.cert.subject,
                        "serial": i.cert.serial,
                        "fingerprint": i.cert.fingerprint,
                        "not_after": i.cert.not_after,
                        "status": "valid",
                        "created_at": now,
                    }
                    for i in identities
                ],
            )
            secrets = [
                (known[i.hardware_id][0], name, fp) for i in identities for name, fp in i.secrets
            ]
            if secrets:
                ids = list({dev_id for dev_id, _, _ in secrets})
                for chunk in _chunks(ids, 500):  # re-provisioning replaces a secret
                    s.execute(delete(Secret).where(Secret.device_id.in_(chunk)))
                s.execute(
                    insert(Secret),
                    [
                        {"device_id": d, "name": n, "fingerprint": fp, "created_at": now}
                        for d, n, fp in secrets
                    ],
                )
            s.execute(
                insert(Event),
                [
                    {
                        "device_id": known[i.hardware_id][0],
                        "kind": "issued",
                        "at": now,
                        "detail": json.dumps({"serial": i.cert.serial}),
                    }
                    for i in identities
                ],
            )

    def mark_active(self, hardware_id: str, detail: dict[str, object] | None = None) -> None:
        with self.session() as s:
            dev = self._device(s, hardware_id)
            if dev.state != "revoked":
                dev.state = "active"
            s.add(Event(device_id=dev.id, kind="provisioned", detail=json.dumps(detail or {})))

    def device(self, hardware_id: str) -> Device:
        with self.session() as s:
            return self._device(s, hardware_id)

    def find_device(self, hardware_id: str) -> Device | None:
        with self.session() as s:
            return s.scalar(select(Device).where(Device.hardware_id == hardware_id))

    def devices(self, state: str | None = None) -> list[Device]:
        with self.session() as s:
            q = select(Device).order_by(Device.id)
            if state:
                q = q.where(Device.state == state)
            return list(s.scalars(q))

    def inventory(
        self, flt: InventoryFilter, after: int = 0, limit: int = 1000
    ) -> list[dict[str, object]]:
        """One page of the device inventory, by device id after ``after`` (keyset: each
        page costs the same at any depth). The cursor for the next page is the last "id"."""
        limit = max(1, min(limit, INVENTORY_PAGE_MAX))
        expiry = (
            select(func.max(Certificate.not_after))
            .where(Certificate.device_id == Device.id, Certificate.status == "valid")
            .correlate(Device)
            .scalar_subquery()
        )
        q = (
            select(
                Device.id,
                Device.hardware_id,
                Device.board,
                Device.state,
                Device.group,
                DeviceStatus.app,
                DeviceStatus.version,
                DeviceStatus.counter,
                DeviceStatus.channel,
                DeviceStatus.last_check_at,
                DeviceStatus.last_report_at,
                DeviceStatus.last_event,
                expiry.label("cert_expires"),
            )
            .outerjoin(DeviceStatus, DeviceStatus.device_id == Device.id)
            .where(Device.id > after)
            .order_by(Device.id)
            .limit(limit)
        )
        if flt.state:
            q = q.where(Device.state == flt.state)
        if flt.group:
            q = q.where(Device.group == flt.group)
        if flt.app:
            q = q.where(DeviceStatus.app == flt.app)
        if flt.version:
            q = q.where(DeviceStatus.version == flt.version)
        if flt.event:
            q = q.where(DeviceStatus.last_event == flt.event)
        # "last seen": by the indexed day first (migration 0010), then by the exact time
        if flt.seen_after:
            q = q.where(
                DeviceStatus.last_check_day >= epoch_day(flt.seen_after),
                DeviceStatus.last_check_at >= flt.seen_after,
            )
        if flt.seen_before:
            q = q.where(
                (
                    (DeviceStatus.last_check_day <= epoch_day(flt.seen_before))
                    & (DeviceStatus.last_check_at < flt.seen_before)
                )
                | DeviceStatus.last_check_at.is_(None)
            )
        if flt.expiring_before:
            q = q.where(expiry < flt.expiring_before)
        with self.session() as s:
            rows = s.execute(q).all()
        return [
            {
                "id": int(r.id),
                "hardware_id": r.hardware_id,
                "board": r.board,
                "state": r.state,
                "group": r.group,
                "app": r.app,
                "version": r.version,
                "counter": r.counter,
                "channel": r.channel,
                "last_check_at": _iso(r.last_check_at),
                "last_report_at": _iso(r.last_report_at),
                "last_event": r.last_event,
                "cert_expires": _iso(r.cert_expires),
            }
            for r in rows
        ]

    def iter_inventory(
        self, flt: InventoryFilter, page: int = INVENTORY_PAGE_MAX
    ) -> Iterator[dict[str, object]]:
        """Every matching device, page by page (memory: one page)."""
        after = 0
        while True:
            rows = self.inventory(flt, after, page)
            yield from rows
            if len(rows) < page:
                return
            after = int(rows[-1]["id"])  # type: ignore[call-overload]

    def import_identities(self, rows: Iterable[ImportRow], activate: bool = False) -> int:
        """Record devices and certificates issued elsewhere, all or nothing; returns how
        many. Every hardware id, fingerprint and serial must be new. PostgreSQL: COPY into
        a temporary table and set-based inserts (a million devices in well under a minute);
        SQLite: batched inserts."""
        state = "active" if activate else "provisioning"
        if self.engine.dialect.name != "postgresql":
            n = 0
            batch: list[ImportRow] = []
            with self.session() as s:
                for row in rows:
                    batch.append(row)
                    if len(batch) >= 5000:
                        n += self._import_batch(s, batch, state)
                        batch = []
                n += self._import_batch(s, batch, state)
                s.add(
                    Event(
                        device_id=None,
                        kind="imported",
                        detail=json.dumps({"devices": n, "state": state}),
                    )
                )
            return n
        try:
            with self.engine.begin() as conn:
                raw: Any = conn.connection.dbapi_connection
                cur = raw.cursor()
                # Room for the hash joins and the duplicate check over a million rows in
                # memory (the default 4 MB spills them to disk): this transaction only.
                cur.execute("SET LOCAL work_mem = '256MB'")
                cur.execute(
                    "CREATE TEMP TABLE import_rows (hardware_id text, board text, "
                    "group_name text, token_hash text, subject text, serial text, "
                    "fingerprint text, not_after timestamptz) ON COMMIT DROP"
                )
                n = 0
                with cur.copy("COPY import_rows FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row(
                            (
                                r.hardware_id,
                                r.board,
                                r.group,
                                r.token_hash,
                                r.subject,
                                r.serial,
                                r.fingerprint,
                                r.not_after,
                            )
                        )
                        n += 1
                cur.execute("ANALYZE import_rows")
                for sql, what in (
                    (
                        "SELECT hardware_id FROM import_rows GROUP BY hardware_id "
                        "HAVING count(*) > 1 LIMIT 1",
                        "appears twice in the file",
                    ),
                    (
                        "SELECT i.hardware_id FROM import_rows i JOIN devices d "
                        "ON d.hardware_id = i.hardware_id LIMIT 1",
                        "is already registered",
                    ),
                ):
                    cur.execute(sql)
                    dup = cur.fetchone()
                    if dup:
                        raise UsageError(f"device {dup[0]} {what}; nothing was imported")
                cur.execute(
                    "INSERT INTO devices (hardware_id, board, state, group_name, "
                    "token_hash, created_at, updated_at) SELECT hardware_id, board, "
                    "%s, group_name, token_hash, now(), now() FROM import_rows",
                    (state,),
                )
                cur.execute(
                    "INSERT INTO certificates (device_id, role, subject, serial, "
                    "fingerprint, not_after, status, created_at) SELECT d.id, "
                    "'device', i.subject, i.serial, i.fingerprint, i.not_after, "
                    "'valid', now() FROM import_rows i JOIN devices d "
                    "ON d.hardware_id = i.hardware_id"
                )
                # One event for the import (not a million rows in the log).
                cur.execute(
                    "INSERT INTO events (device_id, kind, detail, at) VALUES "
                    "(NULL, 'imported', %s, now())",
                    (json.dumps({"devices": n, "state": state}),),
                )
                # Fresh statistics: the planner would otherwise plan for the empty tables.
                cur.execute("ANALYZE devices")
                cur.execute("ANALYZE certificates")
                return n
        except SAIntegrityError as e:
            raise UsageError(
                f"registry conflict: {_first_line(e.orig or e)}; nothing was imported"
            ) from None
        except SQLAlchemyError as e:
            raise TransportError(f"registry database error: {_first_line(e)}") from None
        except Exception as e:  # psycopg's own errors inside COPY
            if type(e).__module__.startswith("psycopg"):
                if "unique" in str(e).lower() or "duplicate" in str(e).lower():
                    raise UsageError(
                        f"registry conflict: {_first_line(e)}; nothing was imported"
                    ) from None
                raise TransportError(f"registry database error: {_first_line(e)}") from None
            raise

    @staticmethod
    def _import_batch(s: Session, batch: list[ImportRow], state: str) -> int:
        if not batch:
            return 0
        now = utcnow()
        hws = [r.hardware_id for r in batch]
        if len(set(hws)) != len(hws):
            raise UsageError("the same hardware id appears twice in the file; nothing was imported")
        dup = s.scalar(select(Device.hardware_id).where(Device.hardware_id.in_(hws)).limit(1))
        if dup is not None:
            raise UsageError(f"device {dup} is already registered; nothing was imported")
        rows = s.execute(
            insert(Device).returning(Device.hardware_id, Device.id),
            [
                {
                    "hardware_id": r.hardware_id,
                    "board": r.board,
                    "state": state,
                    "group": r.group,
                    "token_hash": r.token_hash,
                    "created_at": now,
                    "updated_at": now,
                }
                for r in batch
            ],
        )
        ids = {hw: dev_id for hw, dev_id in rows}  # noqa: C416 - Row objects, not pairs
        s.execute(
            insert(Certificate),
            [
                {
                    "device_id": ids[r.hardware_id],
                    "role": "device",
                    "subject": r.subject,
                    "serial": r.serial,
                    "fingerprint": r.fingerprint,
                    "not_after": r.not_after,
                    "status": "valid",
                    "created_at": now,
                }
                for r in batch
            ],
        )
        return len(batch)

    def activate(self, hardware_ids: Sequence[str] | None = None) -> int:
        """Bulk activation: these devices (None: every one still provisioning) become
        active; returns how many did."""
        with self.session() as s:
            q = (
                update(Device)
                .where(Device.state == "provisioning")
                .values(state="active", updated_at=utcnow())
            )
            if hardware_ids is None:
                return int(s.execute(q).rowcount or 0)  # type: ignore[attr-defined]
            n = 0
            for chunk in _chunks(list(hardware_ids), 1000):
                n += int(s.execute(q.where(Device.hardware_id.in_(chunk))).rowcount or 0)  # type: ignore[attr-defined]
            return n

    def set_group(self, hardware_id: str, group: str) -> str:
        """Move a device to a rollout group; returns its old group."""
        with self.session() as s:
            dev = self._device(s, hardware_id)
            old = dev.group
            dev.group = group
            s.add(
                Event(device_id=dev.id, kind="group", detail=json.dumps({"from": old, "to": group}))
            )
            return old

    def certificates(self, hardware_id: str | None = None) -> list[Certificate]:
        with self.session() as s:
            q = select(Certificate).order_by(Certificate.not_after)
            if hardware_id:
                q = q.join(Device).where(Device.hardware_id == hardware_id)
            return list(s.scalars(q))

    def count(self, model: type) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    def events(self, hardware_id: str | None = None) -> list[Event]:
        with self.session() as s:
            q = select(Event).order_by(Event.id)
            if hardware_id:
                q = q.join(Device, Device.id == Event.device_id).where(
                    Device.hardware_id == hardware_id
                )
            return list(s.scalars(q))

    def log(self, hardware_id: str | None, kind: str, detail: dict[str, object]) -> None:
        with self.session() as s:
            dev_id = self._device(s, hardware_id).id if hardware_id else None
            s.add(Event(device_id=dev_id, kind=kind, detail=json.dumps(detail)))

    # -- revocation (enforced by the update server) ------------------------------

    def revoke_device(self, hardware_id: str, reason: str = "") -> int:
        """Revoke a device and all its certificates; returns how many certificates."""
        with self.session() as s:
            dev = self._device(s, hardware_id)
            dev.state = "revoked"
            dev.token_hash = None
            n = 0
            for cert in dev.certificates:
                if cert.status != "revoked":
                    cert.status = "revoked"
                    n += 1
            s.add(Event(device_id=dev.id, kind="revoked", detail=json.dumps({"reason": reason})))
            return n

    def revoke_certificate(self, fingerprint_or_serial: str, reason: str = "") -> None:
        key = fingerprint_or_serial.lower()
        with self.session() as s:
            cert = s.scalar(
                select(Certificate).where(
                    (Certificate.fingerprint == key) | (Certificate.serial == key)
                )
            )
            if cert is None:
                raise UsageError(f"no certificate {fingerprint_or_serial} in the registry")
            cert.status = "revoked"
            s.add(
                Event(
                    device_id=cert.device_id,
                    kind="cert-revoked",
                    detail=json.dumps({"serial": cert.serial, "reason": reason}),
                )
            )

    def is_allowed(self, *, fingerprint: str | None = None, token: str | None = None) -> bool:
        """May this certificate (SHA-256 of its DER) or device token talk to the server?"""
        with self.session() as s:
            if fingerprint:
                cert = s.scalar(
                    select(Certificate).where(Certificate.fingerprint == fingerprint.lower())
                )
                if cert is None or cert.status != "valid" or _aware(cert.not_after) < utcnow():
                    return False
                dev = cert.device
                return dev is None or dev.state == "active"
            if token:
                dev = s.scalar(select(Device).where(Device.token_hash == token_hash(token)))
                return dev is not None and dev.state == "active"
        return False

    @staticmethod
    def _device(s: Session, hardware_id: str | None) -> Device:
        dev = s.scalar(select(Device).where(Device.hardware_id == hardware_id))
        if dev is None:
            raise UsageError(f"no device {hardware_id} in the registry")
        return dev


def _chunks(items: Sequence[str] | list[int], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])


def _aware(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything mpseal stores is UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


def _safe(url: str) -> str:
    """A database URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
