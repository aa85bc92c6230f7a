"""The update server's data: releases, rollouts, device reports, signed timestamps.

Every call is one transaction on the registry's database (errors translated there:
a conflict is a ``UsageError``, anything else a ``TransportError``). No state is
kept in the process, so any number of server processes can share one PostgreSQL:
the timestamp version comes from one counter row bumped with ``UPDATE ... RETURNING``
(a row lock on PostgreSQL, the write lock on SQLite), and a timestamp row is only
replaced if it is still the one the caller read (optimistic concurrency).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, create_engine, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from mpseal.errors import TransportError, UsageError
from mpseal.fleet.models import Certificate, Device, Event, utcnow
from mpseal.fleet.registry import Registry
from mpseal.fleet.releases import (
    FAILED_EVENTS,
    TIMESTAMP_COUNTER,
    Counter,
    DeviceUpdate,
    Release,
    ReleasePin,
    SignedTimestamp,
)
from mpseal.fleet.rollout import DeviceView, HaltPolicy, ReleaseStats, ReleaseView


@dataclass(frozen=True)
class NewRelease:
    """A verified artifact, as the server records it."""

    app: str
    board: str
    version: str
    counter: int
    manifest_sha256: str
    file_sha256: str
    size: int
    channel: str


@dataclass(frozen=True)
class ReleaseInfo:
    view: ReleaseView
    file_sha256: str
    size: int
    halt_reason: str | None
    created_at: datetime
    stats: ReleaseStats = field(default_factory=ReleaseStats)

    def to_dict(self) -> dict[str, object]:
        v = self.view
        s = self.stats
        return {"id": v.id, "app": v.app, "board": v.board, "channel": v.channel,
                "version": v.version, "counter": v.counter,
                "manifest_sha256": v.manifest_sha256, "file_sha256": self.file_sha256,
                "size": self.size, "state": v.state, "percent": v.percent,
                "groups": sorted(v.groups), "pins": sorted(v.pins),
                "halt_reason": self.halt_reason, "created_at": _aware(self.created_at).isoformat(),
                "counts": {"attempts": s.attempts, "updated": s.updated, "failed": s.failed,
                           "refused": s.refused, "rolled_back": s.rolled_back,
                           "trial_timeouts": s.trial_timeouts, "in_progress": s.in_progress}}


@dataclass(frozen=True)
class TimestampRecord:
    channel: str
    version: int
    issued: int
    expires: int
    root_version: int
    targets_digest: str
    data: bytes


class _Lost(Exception):
    """Another server process replaced the timestamp first: roll back, nothing to do."""


# The hot lookups, built once (their compiled form is cached): devices by token hash or by
# certificate fingerprint, each with the releases it refused or rolled back.
_FAILED = and_(DeviceUpdate.device_id == Device.id, DeviceUpdate.state.in_(FAILED_EVENTS))
_COLUMNS = (Device.id, Device.hardware_id, Device.group.label("group"), DeviceUpdate.release_id)
_BY_TOKEN = (select(Device.token_hash, *_COLUMNS).outerjoin(DeviceUpdate, _FAILED)
             .where(Device.token_hash.in_(bindparam("keys", expanding=True)),
                    Device.state == "active"))
_BY_FINGERPRINT = (select(Certificate.fingerprint, *_COLUMNS, Certificate.not_after)
                   .select_from(Certificate).join(Device, Certificate.device_id == Device.id)
                   .outerjoin(DeviceUpdate, _FAILED)
                   .where(Certificate.fingerprint.in_(bindparam("keys", expanding=True)),
                          Certificate.status == "valid", Device.state == "active"))


class ReleaseStore:
    def __init__(self, registry: Registry, read_pool_size: int = 4) -> None:
        self.registry = registry
        self._upsert = _upsert_for(registry.engine.dialect.name)
        # The hot device lookup: single statements in autocommit (no BEGIN/ROLLBACK round
        # trips), no ping before each use. A connection the database dropped fails one
        # lookup (a 503), and SQLAlchemy replaces the pool's connections.
        self._read_engine = create_engine(registry.engine.url, pool_size=read_pool_size,
                                          max_overflow=read_pool_size, pool_pre_ping=False,
                                          pool_recycle=600, isolation_level="AUTOCOMMIT")

    def close(self) -> None:
        self._read_engine.dispose()

    # -- releases ----------------------------------------------------------------------

    def publish(self, new: NewRelease) -> ReleaseInfo:
        now = utcnow()
        with self.registry.session() as s:
            dup = s.scalar(select(Release.id).where(
                Release.channel == new.channel, Release.app == new.app,
                Release.board == new.board, Release.version == new.version))
            if dup is not None:
                raise UsageError(f"{new.app} {new.version} for {new.board} is already published "
                                 f"in channel {new.channel} (release {dup}); publish a new version")
            rel = Release(app=new.app, board=new.board, version=new.version, counter=new.counter,
                          manifest_sha256=new.manifest_sha256, file_sha256=new.file_sha256,
                          size=new.size, channel=new.channel, state="active", percent=0.0,
                          groups="[]", created_at=now, updated_at=now)
            s.add(rel)
            s.flush()
            return _info(rel, frozenset())

    def get(self, release_id: int) -> ReleaseInfo:
        with self.registry.session() as s:
            rel = self._release(s, release_id)
            return _info(rel, self._pins(s, [rel.id]).get(rel.id, frozenset()))

    def releases(self, channel: str | None = None, policy: HaltPolicy | None = None,
             now: datetime | None = None, stats: bool = True) -> list[ReleaseInfo]:
        """Every release, oldest first, with its per-device counts (unless ``stats`` is off)."""
        with self.registry.session() as s:
            q = select(Release).order_by(Release.id)
            if channel:
                q = q.where(Release.channel == channel)
            rels = list(s.scalars(q))
            ids = [r.id for r in rels]
            pins = self._pins(s, ids)
            counts = self._stats(s, ids, policy or HaltPolicy(), now or utcnow()) if stats else {}
            return [_info(r, pins.get(r.id, frozenset()), counts.get(r.id)) for r in rels]

    def views(self, channel: str, app: str | None = None,
              board: str | None = None) -> list[ReleaseView]:
        """The releases of a channel (optionally one app and board), any state, with pins."""
        with self.registry.session() as s:
            q = select(Release).where(Release.channel == channel)
            if app is not None:
                q = q.where(Release.app == app)
            if board is not None:
                q = q.where(Release.board == board)
            rels = list(s.scalars(q))
            pins = self._pins(s, [r.id for r in rels])
            return [_view(r, pins.get(r.id, frozenset())) for r in rels]

    def channels(self) -> list[str]:
        with self.registry.session() as s:
            return sorted(s.scalars(select(Release.channel).distinct()))

    def promote(self, release_id: int, *, percent: float | None = None,
                group: str | None = None, pin: str | None = None) -> ReleaseInfo:
        """Widen a rollout: set the percentage, add a device group, or pin one device."""
        if sum(x is not None for x in (percent, group, pin)) != 1:
            raise UsageError("promote takes exactly one of percent, group or pin")
        with self.registry.session() as s:
            rel = self._release(s, release_id)
            if rel.state == "halted":
                raise UsageError(f"release {rel.id} ({rel.version}) is halted: {rel.halt_reason}; "
                                 "publish a fixed version instead")
            if percent is not None:
                if not 0 <= percent <= 100:
                    raise UsageError(f"percent must be 0..100, not {percent}")
                rel.percent = float(percent)
            elif group is not None:
                groups = set(json.loads(rel.groups)) | {group}
                rel.groups = json.dumps(sorted(groups))
            elif pin is not None:
                self._pin(s, rel, pin)
            rel.updated_at = utcnow()
            s.flush()
            return _info(rel, self._pins(s, [rel.id]).get(rel.id, frozenset()))

    def _pin(self, s: Session, rel: Release, hardware_id: str) -> None:
        if s.scalar(select(Device.id).where(Device.hardware_id == hardware_id)) is None:
            raise UsageError(f"no device {hardware_id} in the registry; cannot pin it")
        siblings = select(Release.id).where(Release.channel == rel.channel,
                                            Release.app == rel.app, Release.board == rel.board)
        for old in s.scalars(select(ReleasePin).where(ReleasePin.hardware_id == hardware_id,
                                                      ReleasePin.release_id.in_(siblings))):
            s.delete(old)  # one pin per device, app, board and channel
        s.flush()
        s.add(ReleasePin(release_id=rel.id, hardware_id=hardware_id, created_at=utcnow()))

    def set_state(self, release_id: int, state: str) -> ReleaseInfo:
        """Pause or resume a rollout (a halted release stays halted)."""
        if state not in ("active", "paused"):
            raise UsageError(f"a release can be set active or paused, not {state!r}")
        with self.registry.session() as s:
            rel = self._release(s, release_id)
            if rel.state == "halted":
                raise UsageError(f"release {rel.id} ({rel.version}) is halted: {rel.halt_reason}; "
                                 "it cannot be resumed, publish a fixed version")
            rel.state = state
            rel.updated_at = utcnow()
            s.flush()
            return _info(rel, self._pins(s, [rel.id]).get(rel.id, frozenset()))

    def halt(self, release_id: int, reason: str) -> bool:
        """Halt a release; False if it already was (several processes may decide at once)."""
        with self.registry.session() as s:
            res = s.execute(update(Release)
                            .where(Release.id == release_id, Release.state != "halted")
                            .values(state="halted", halt_reason=reason[:500], updated_at=utcnow()))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def stats(self, release_ids: Sequence[int], policy: HaltPolicy,
              now: datetime | None = None) -> dict[int, ReleaseStats]:
        with self.registry.session() as s:
            return self._stats(s, release_ids, policy, now or utcnow())

    @staticmethod
    def _release(s: Session, release_id: int) -> Release:
        rel = s.get(Release, release_id)
        if rel is None:
            raise UsageError(f"no release {release_id}")
        return rel

    @staticmethod
    def _pins(s: Session, ids: Sequence[int]) -> dict[int, frozenset[str]]:
        out: dict[int, set[str]] = {}
        if ids:
            for rid, hw in s.execute(select(ReleasePin.release_id, ReleasePin.hardware_id)
                                     .where(ReleasePin.release_id.in_(list(ids)))):
                out.setdefault(rid, set()).add(hw)
        return {k: frozenset(v) for k, v in out.items()}

    @staticmethod
    def _stats(s: Session, ids: Sequence[int], policy: HaltPolicy,
               now: datetime) -> dict[int, ReleaseStats]:
        if not ids:
            return {}
        cutoff = now - timedelta(seconds=policy.trial_window_seconds)
        timed_out = and_(DeviceUpdate.state == "booted", DeviceUpdate.updated_at < cutoff)
        rows = s.execute(
            select(DeviceUpdate.release_id, func.count(),
                   func.sum(case((DeviceUpdate.state == "confirmed", 1), else_=0)),
                   func.sum(case((DeviceUpdate.state == "refused", 1), else_=0)),
                   func.sum(case((DeviceUpdate.state == "rolled_back", 1), else_=0)),
                   func.sum(case((timed_out, 1), else_=0)))
            .where(DeviceUpdate.release_id.in_(list(ids)))
            .group_by(DeviceUpdate.release_id))
        return {rid: ReleaseStats(int(n), int(ok or 0), int(ref or 0), int(rb or 0), int(to or 0))
                for rid, n, ok, ref, rb, to in rows}

    # -- devices -------------------------------------------------------------------------

    def device(self, *, token_hash: str | None = None,
               fingerprint: str | None = None) -> DeviceView | None:
        """The active device with this token hash or certificate fingerprint, or None."""
        if token_hash:
            return self.devices(token_hashes=[token_hash]).get(("token", token_hash))
        if fingerprint:
            fp = fingerprint.lower()
            return self.devices(fingerprints=[fp]).get(("cert", fp))
        return None

    def devices(self, token_hashes: Sequence[str] = (),
                fingerprints: Sequence[str] = ()) -> dict[tuple[str, str], DeviceView]:
        """Many devices at once, keyed ("token", hash) or ("cert", fingerprint); one indexed
        query per kind (batched by the server when many devices check at the same time).

        The same rule as ``Registry.is_allowed``: an active device; for a certificate,
        one that is valid and not expired. A certificate of no device is no device.
        """
        found: dict[tuple[str, str], list[Any]] = {}
        now = utcnow()
        with self._reading() as conn:
            for chunk in _chunks(list(token_hashes), 500):
                for row in conn.execute(_BY_TOKEN, {"keys": chunk}):
                    found.setdefault(("token", str(row[0])), []).append(row)
            for chunk in _chunks([f.lower() for f in fingerprints], 500):
                for cert_row in conn.execute(_BY_FINGERPRINT, {"keys": chunk}):
                    if _aware(cert_row.not_after) >= now:
                        found.setdefault(("cert", str(cert_row[0])), []).append(cert_row)
        return {key: DeviceView(rows[0].id, rows[0].hardware_id, rows[0].group,
                                frozenset(r.release_id for r in rows if r.release_id is not None))
                for key, rows in found.items()}

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A plain connection for the hot read path (no ORM session), errors translated."""
        try:
            with self._read_engine.connect() as conn:
                yield conn
        except SQLAlchemyError as e:
            line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise TransportError(f"registry database error: {line}") from None

    def record_report(self, device_id: int, hardware_id: str, release_id: int | None,
                      event: str, version: str, reason: str) -> None:
        """A device's report: its status for the release, and a line in the event log."""
        now = utcnow()
        with self.registry.session() as s:
            if release_id is not None:
                s.execute(self._upsert(
                    {"device_id": device_id, "release_id": release_id, "state": event,
                     "reason": reason[:200], "first_at": now, "updated_at": now}))
            s.execute(insert(Event).values(
                device_id=device_id, kind=f"update-{event}", at=now,
                detail=json.dumps({"version": version, "release": release_id,
                                   "reason": reason[:200]})))

    def release_for_report(self, app: str | None, board: str | None,
                           version: str) -> int | None:
        """The newest release of this version (and app and board, if the device said)."""
        q = select(func.max(Release.id)).where(Release.version == version)
        if app:
            q = q.where(Release.app == app)
        if board:
            q = q.where(Release.board == board)
        with self.registry.session() as s:
            return s.scalar(q)

    # -- signed timestamps --------------------------------------------------------------

    def timestamp(self, channel: str) -> TimestampRecord | None:
        with self.registry.session() as s:
            row = s.get(SignedTimestamp, channel)
            return None if row is None else _ts_record(row)

    def replace_timestamp(self, channel: str, expected_version: int | None,
                          make: Callable[[int], TimestampRecord]) -> TimestampRecord | None:
        """Sign and store a new timestamp for ``channel`` if the stored one is still
        ``expected_version`` (None: there is none yet); None if another process won.

        ``make(version)`` signs; the version comes from the shared counter, so
        versions strictly increase across every process on this database.
        """
        try:
            with self.registry.session() as s:
                version = s.execute(update(Counter).where(Counter.name == TIMESTAMP_COUNTER)
                                    .values(value=Counter.value + 1)
                                    .returning(Counter.value)).scalar_one()
                rec = make(int(version))
                values = {"version": rec.version, "issued": rec.issued, "expires": rec.expires,
                          "root_version": rec.root_version, "targets_digest": rec.targets_digest,
                          "data": rec.data}
                if expected_version is None:
                    stmt = _insert_for(self.registry.engine.dialect.name)(SignedTimestamp)
                    res = s.execute(stmt.values(channel=channel, **values)
                                    .on_conflict_do_nothing(index_elements=["channel"]))
                else:
                    res = s.execute(update(SignedTimestamp)
                                    .where(SignedTimestamp.channel == channel,
                                           SignedTimestamp.version == expected_version)
                                    .values(**values))
                if not res.rowcount:  # type: ignore[attr-defined]
                    raise _Lost
                return rec
        except _Lost:
            return None


def _view(r: Release, pins: frozenset[str]) -> ReleaseView:
    return ReleaseView(id=r.id, app=r.app, board=r.board, channel=r.channel, version=r.version,
                       counter=int(r.counter), manifest_sha256=r.manifest_sha256, state=r.state,
                       percent=float(r.percent), groups=frozenset(json.loads(r.groups)), pins=pins)


def _info(r: Release, pins: frozenset[str], stats: ReleaseStats | None = None) -> ReleaseInfo:
    return ReleaseInfo(_view(r, pins), r.file_sha256, int(r.size), r.halt_reason, r.created_at,
                       stats or ReleaseStats())


def _ts_record(row: SignedTimestamp) -> TimestampRecord:
    return TimestampRecord(row.channel, int(row.version), int(row.issued), int(row.expires),
                           int(row.root_version), row.targets_digest, bytes(row.data))


def _insert_for(dialect: str) -> Callable:  # type: ignore[type-arg]
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _upsert_for(dialect: str) -> Callable[[dict[str, object]], Executable]:
    ins = _insert_for(dialect)

    def upsert(values: dict[str, object]) -> Executable:
        stmt = ins(DeviceUpdate).values(**values)
        done: Executable = stmt.on_conflict_do_update(
            index_elements=["device_id", "release_id"],
            set_={"state": stmt.excluded.state, "reason": stmt.excluded.reason,
                  "updated_at": stmt.excluded.updated_at})
        return done

    return upsert


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
