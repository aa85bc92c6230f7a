"""The audit log: every admin action (publish, promote, pause, resume, policy, revoke,
group, trust-root adoption, automatic halts), who did it, what, when.

Append-only and hash-chained: each row's ``hash`` is SHA-256 over the previous row's
hash and the row's own fields, and ``prev_hash`` is unique, so two writers (threads or
server processes) cannot both extend the same head: the loser retries on the new head.
``verify`` walks the chain and names the first row that was edited, or the gap a deleted
row left. Threat tier (DESIGN.md): T2, a compromised server or its database: an edit or
deletion *inside* the chain is detected; a chain rewritten from some row on, or its newest
rows deleted, is detected only against a head recorded elsewhere
(``verify(expect_head=...)``, ``mpseal audit-log verify --head``). The hashes are not
signed: whoever can write the database can rebuild a consistent chain, so keep the head
outside it (a ticket, a log shipper) if that matters.

Who: an admin token is recorded as its id (the first 16 hex digits of the SHA-256 of
the token, the hash ``serve`` is configured with), never the token.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column

from mpseal.errors import IntegrityError, UsageError
from mpseal.fleet.models import Base, BigId
from mpseal.fleet.registry import Registry

GENESIS = "0" * 64
ACTOR_MAX = 64
TARGET_MAX = 128
DETAIL_MAX = 2000
PAGE_MAX = 500  # rows in one page


class AuditRow(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(ACTOR_MAX))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(TARGET_MAX))
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))


def local_actor() -> str:
    """Who ran an offline command on the database (``mpseal registry ...``): the OS user."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"local:{user}@{socket.gethostname()}"[:ACTOR_MAX]


def record_local(
    reg: Registry, action: str, target: str, detail: dict[str, object] | None = None
) -> None:
    """An audit row for an offline admin command (the server does not see those)."""
    AuditLog(reg).append(local_actor(), action, target, detail)


def token_id(token_sha256_hex: str) -> str:
    """The audit name of an admin token, from the SHA-256 hex of the token."""
    return "token:" + token_sha256_hex[:16]


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _stamp(dt: datetime) -> str:
    # microseconds, UTC: what every database keeps exactly
    return _aware(dt).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_hash(
    prev: str, seq: int, at: datetime, actor: str, action: str, target: str, detail: str
) -> str:
    body = json.dumps(
        [prev, seq, _stamp(at), actor, action, target, detail],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, object]
    hash: str

    def to_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "at": _aware(self.at).isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Verified:
    rows: int
    head: str


class AuditLog:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def append(
        self,
        actor: str,
        action: str,
        target: str,
        detail: dict[str, object] | None = None,
        at: datetime | None = None,
    ) -> Entry:
        """Add one row at the head of the chain (retried if another writer got there)."""
        text = json.dumps(
            detail or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str
        )[:DETAIL_MAX]
        actor, target = actor[:ACTOR_MAX], target[:TARGET_MAX]
        for _ in range(50):
            when = _aware(at or datetime.now(UTC))
            try:
                with self.registry.session() as s:
                    last = s.execute(
                        select(AuditRow.id, AuditRow.hash).order_by(AuditRow.id.desc()).limit(1)
                    ).first()
                    prev = last[1] if last else GENESIS
                    seq = (int(last[0]) if last else 0) + 1
                    h = row_hash(prev, seq, when, actor, action, target, text)
                    s.add(
                        AuditRow(
                            id=seq,
                            at=when,
                            actor=actor,
                            action=action,
                            target=target,
                            detail=text,
                            prev_hash=prev,
                            hash=h,
                        )
                    )
                return Entry(seq, when, actor, action, target, json.loads(text), h)
            except UsageError:  # unique prev_hash or id: another writer extended the chain
                continue
        raise UsageError("the audit log is contended: nothing recorded")

    def page(
        self, before: int | None = None, limit: int = 50, action: str | None = None
    ) -> list[Entry]:
        """Newest first, at most ``limit`` (1..PAGE_MAX); ``before``: the seq to page back
        from; ``action``: only rows of this action."""
        with self.registry.session() as s:
            q = select(AuditRow).order_by(AuditRow.id.desc()).limit(max(1, min(limit, PAGE_MAX)))
            if before is not None:
                q = q.where(AuditRow.id < before)
            if action is not None:
                q = q.where(AuditRow.action == action)
            return [_entry(r) for r in s.scalars(q)]

    def last(self, action: str) -> Entry | None:
        """The newest row of this action (the ``config`` rows: see server/actions.py)."""
        with self.registry.session() as s:
            r = s.scalar(
                select(AuditRow)
                .where(AuditRow.action == action)
                .order_by(AuditRow.id.desc())
                .limit(1)
            )
            return None if r is None else _entry(r)

    def count(self) -> int:
        with self.registry.session() as s:
            return int(s.scalar(select(func.count()).select_from(AuditRow)) or 0)

    def _rows(self, batch: int = 5000) -> Iterator[AuditRow]:
        after = 0
        while True:
            with self.registry.session() as s:
                rows = list(
                    s.scalars(
                        select(AuditRow)
                        .where(AuditRow.id > after)
                        .order_by(AuditRow.id)
                        .limit(batch)
                    )
                )
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1].id

    def verify(self, expect_head: str | None = None) -> Verified:
        """Walk the chain; an ``IntegrityError`` names the first row that does not fit."""
        prev, seq = GENESIS, 0
        for r in self._rows():
            seq += 1
            if r.id != seq:
                raise IntegrityError(
                    f"audit log: row {seq} is missing (next row is {r.id}): a row was deleted"
                )
            if r.prev_hash != prev:
                raise IntegrityError(
                    f"audit log: row {r.id} does not follow row {seq - 1}: "
                    "a row was deleted or replaced"
                )
            if row_hash(prev, r.id, r.at, r.actor, r.action, r.target, r.detail) != r.hash:
                raise IntegrityError(
                    f"audit log: row {r.id} was edited (its hash does not match its content)"
                )
            prev = r.hash
        if expect_head is not None and expect_head != prev:
            raise IntegrityError(
                f"audit log: the head is {prev[:16]}.. after {seq} rows, not "
                f"the expected {expect_head[:16]}..: rows were removed or "
                "the chain was rewritten"
            )
        return Verified(seq, prev)


def _entry(r: AuditRow) -> Entry:
    try:
        detail = json.loads(r.detail)
    except ValueError:
        detail = {"unparsed": r.detail}
    return Entry(
        r.id,
        r.at,
        r.actor,
        r.action,
        r.target,
        detail if isinstance(detail, dict) else {"value": detail},
        r.hash,
    )
