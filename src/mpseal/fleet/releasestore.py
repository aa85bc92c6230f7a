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
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii as _json_text  # json.dumps' own (C)
from typing import Any, cast

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from mpseal.errors import TransportError, UsageError
from mpseal.fleet.models import (
    DAY_SECONDS,
    Certificate,
    Device,
    DeviceStatus,
    Event,
    epoch_day,
    utcnow,
)
from mpseal.fleet.registry import CONNECT_TIMEOUT, Registry, connect_args
from mpseal.fleet.releases import (
    COUNT_SHARDS,
    FAILED_EVENTS,
    TIMESTAMP_COUNTER,
    TRIAL_STATE,
    UPDATE_STATES,
    ArtifactBlob,
    Counter,
    DeviceUpdate,
    Release,
    ReleaseCount,
    ReleaseDelta,
    ReleaseHalt,
    ReleaseKey,
    ReleasePin,
    SignedTimestamp,
    StoredRoot,
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
    deltas: tuple[NewDelta, ...] = ()
    # An encrypted release: (stored image SHA-256, its key), checked to open it by the caller
    key: tuple[str, bytes] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class NewDelta:
    """A delta that rebuilds the new release from the artifact ``from_file_sha256``."""

    from_version: str
    from_file_sha256: str
    delta_sha256: str
    size: int


# Deltas are made at publish time from at most this many releases devices run (the ones
# most devices run first).
MAX_DELTA_BASES = 8


@dataclass(frozen=True)
class PolicyOverrides:
    """A release's own halt settings; None keeps the server's."""

    min_attempts: int | None = None
    max_failure_ratio: float | None = None
    min_cohort_share: float | None = None

    def apply(self, policy: HaltPolicy) -> HaltPolicy:
        return policy.with_overrides(
            self.min_attempts, self.max_failure_ratio, self.min_cohort_share
        )


@dataclass(frozen=True)
class HaltRecord:
    """One automatic halt of a release; who resumed it, when and why (None: it was not)."""

    halted_at: datetime
    reason: str
    resumed_at: datetime | None = None
    resumed_by: str | None = None
    resume_reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "halted_at": _aware(self.halted_at).isoformat(),
            "reason": self.reason,
            "resumed_at": None if self.resumed_at is None else _aware(self.resumed_at).isoformat(),
            "resumed_by": self.resumed_by,
            "resume_reason": self.resume_reason,
        }


# Resuming a halted release needs a reason of at least this many characters (what the
# audit log and the release's halt history keep of an admin overriding the server).
RESUME_REASON_MIN = 3
RESUME_REASON_MAX = 200


def _counts(s: ReleaseStats) -> dict[str, int]:
    return {
        "attempts": s.attempts,
        "updated": s.updated,
        "failed": s.failed,
        "refused": s.refused,
        "rolled_back": s.rolled_back,
        "trial_timeouts": s.trial_timeouts,
        "in_progress": s.in_progress,
        "cohort": s.cohort,
    }


@dataclass(frozen=True)
class ReleaseInfo:
    view: ReleaseView
    file_sha256: str
    size: int
    halt_reason: str | None  # why it is halted now (None unless state is "halted")
    created_at: datetime
    stats: ReleaseStats = field(default_factory=ReleaseStats)
    overrides: PolicyOverrides = field(default_factory=PolicyOverrides)
    halts: tuple[HaltRecord, ...] = ()  # oldest first

    def to_dict(self) -> dict[str, object]:
        v = self.view
        s = self.stats
        return {
            "id": v.id,
            "app": v.app,
            "board": v.board,
            "channel": v.channel,
            "version": v.version,
            "counter": v.counter,
            "manifest_sha256": v.manifest_sha256,
            "file_sha256": self.file_sha256,
            "size": self.size,
            "state": v.state,
            "percent": v.percent,
            "groups": sorted(v.groups),
            "pins": sorted(v.pins),
            "halt_reason": self.halt_reason,
            "created_at": _aware(self.created_at).isoformat(),
            "deltas": [{"from": f, "sha256": h, "size": n} for f, h, n in v.deltas],
            "counts": _counts(s),
            # what the automatic halt counts since the release was last resumed after one
            "counts_since_resume": None if s.base is None else _counts(s.since_resume()),
            "halts": [h.to_dict() for h in self.halts],
            "halt_policy": {
                "min_attempts": self.overrides.min_attempts,
                "max_failure_ratio": self.overrides.max_failure_ratio,
                "min_cohort_share": self.overrides.min_cohort_share,
            },
        }


@dataclass(frozen=True)
class Report:
    """One device report, as the server stores it. ``release_id`` is set only when the
    release was offered to this device: then it counts towards the release's halt."""

    device_id: int
    event: str
    version: str
    reason: str
    release_id: int | None = None
    app: str | None = None
    channel: str | None = None


@dataclass(frozen=True)
class Checkin:
    """What a device said in its last update check (the inventory)."""

    device_id: int
    app: str
    version: str
    counter: int
    channel: str
    at: datetime


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
# A device as the server caches it: (id, hardware_id, group, failed release ids sorted,
# board). A tuple of strings and ints leaves the garbage collector's lists at the first
# collection it survives, where a DeviceView (and its frozenset) stays in them: with the
# device cache refilled at every check, DeviceViews made each gen-1 collection traverse tens
# of thousands more objects (76-110 ms pauses, in the checks' p99).
DeviceRow = tuple[int, str, str, tuple[int, ...], str]
_NO_FAILURES: frozenset[int] = frozenset()
# A credential's device and, for a certificate, when it expires (Unix time).
Credential = tuple[DeviceRow, float | None]
# A change read from the feed of changed devices (``device_changes``): the device, and the
# release that entered (True) or left its failed ones, or None: the device changed otherwise.
DeviceChange = tuple[int, int | None, bool]


def device_view(row: DeviceRow) -> DeviceView:
    """The view a ``DeviceRow`` stands for (built on each use, ~1 us; most devices failed
    no release and share one empty set)."""
    dev_id, hardware_id, group, failed, board = row
    return DeviceView(
        dev_id, hardware_id, group, frozenset(failed) if failed else _NO_FAILURES, board
    )


_COLUMNS = (
    Device.id,
    Device.hardware_id,
    Device.group.label("group"),
    DeviceUpdate.release_id,
    Device.board,
)
_BY_TOKEN = (
    select(Device.token_hash, *_COLUMNS)
    .outerjoin(DeviceUpdate, _FAILED)
    .where(Device.token_hash.in_(bindparam("keys", expanding=True)), Device.state == "active")
)
_BY_FINGERPRINT = (
    select(Certificate.fingerprint, *_COLUMNS, Certificate.not_after)
    .select_from(Certificate)
    .join(Device, Certificate.device_id == Device.id)
    .outerjoin(DeviceUpdate, _FAILED)
    .where(
        Certificate.fingerprint.in_(bindparam("keys", expanding=True)),
        Certificate.status == "valid",
        Device.state == "active",
    )
)

# The same two lookups on PostgreSQL: one statement whatever the number of keys (one text
# parameter of comma-separated hex keys: a single value to send; prepared once), and each
# device's failed releases found through its own primary-key entries (LATERAL), so a
# lookup costs the same however many devices failed a release (a plain join may scan
# every failed row when the planner's statistics lag behind).
_PG_FAILED = (
    " LEFT JOIN LATERAL (SELECT du.release_id, du.state FROM device_updates du"  # noqa: S608
    " WHERE du.device_id = d.id OFFSET 0) f"  # OFFSET 0: a per-device subquery, kept apart
    " ON f.state IN (" + ", ".join(f"'{e}'" for e in FAILED_EVENTS) + ")"  # constants
)
# A credential's rows, as ``_credential`` reads them: (key, id, hardware_id, group, failed
# release or NULL, board[, not_after]); the lookups and the directory's pages differ only
# in which credentials they read.
_PG_TOKENS = (
    'SELECT d.token_hash, d.id, d.hardware_id, d.group_name AS "group", f.release_id, d.board '
    "FROM devices d" + _PG_FAILED
)
_PG_CERTS = (
    'SELECT c.fingerprint, d.id, d.hardware_id, d.group_name AS "group", f.release_id, '  # noqa: S608
    "d.board, c.not_after FROM certificates c JOIN devices d ON c.device_id = d.id" + _PG_FAILED
)
_PG_BY_TOKEN = (
    _PG_TOKENS + " WHERE d.token_hash = ANY(string_to_array(%s, ',')) AND d.state = 'active'"
)
_PG_BY_FINGERPRINT = (
    _PG_CERTS + " WHERE c.fingerprint = ANY(string_to_array(%s, ',')) AND c.status = 'valid'"
    " AND d.state = 'active'"
)
# The server's device directory (server/directory.py): active devices a page at a time,
# their credentials as the lookups above read them, and the feed of changed devices
# (migrations 0011, 0012). The changes are read with the oldest transaction still running
# in the same snapshot: a change this read cannot see belongs to a transaction from it on.
# A device's rows come as one (release NULL: the device changed) and one for each release
# that entered or left its failed ones (the latest row's ``failed``, by ``id``).
_PG_PAGE = "SELECT id FROM devices WHERE state = 'active' AND id > %s ORDER BY id LIMIT %s"
_PG_PAGE_TOKENS = _PG_TOKENS + " WHERE d.id = ANY(%s) AND d.token_hash IS NOT NULL"
_PG_PAGE_CERTS = _PG_CERTS + " WHERE d.id = ANY(%s) AND c.status = 'valid'"
_PG_CHANGES = (
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, NULL::integer, "
    "NULL::integer, NULL::boolean UNION ALL SELECT * FROM (SELECT DISTINCT ON (device_id, "
    "release_id) NULL::bigint, device_id, release_id, failed FROM device_changes "
    "WHERE xid >= %s::text::xid8 ORDER BY device_id, release_id, id DESC) c"
)
_NO_XID = 2**63 - 1  # later than any transaction
# (only rows of finished transactions: a server reads a row once its transaction ended)
_PG_PRUNE_CHANGES = (
    "DELETE FROM device_changes WHERE at < now() - make_interval(secs => %s) "
    "AND xid < pg_snapshot_xmin(pg_current_snapshot())"
)

_DU = cast(Table, DeviceUpdate.__table__)
# The inventory's batches and the report batch take their rows as one JSON parameter
# (json_to_recordset): one value to send, encoded by the json module, where an array per
# column cost the driver a Python loop per element.
# (Check-in times go as Unix seconds: a datetime and its ISO text per row cost the worker
# thread, holding the GIL, twice the rest of the row.)
# (The day is epoch_day's, in SQL.)
_PG_CHECKINS = (
    "INSERT INTO device_status (device_id, app, version, counter, channel, last_check_at, "  # noqa: S608
    f"last_check_day) SELECT d, a, v, c, ch, to_timestamp(t), floor(t / {DAY_SECONDS})::integer "
    "FROM json_to_recordset(%s::json) AS v(d integer, a text, v text, c bigint, ch text, "
    "t float8) ORDER BY 1 ON CONFLICT (device_id) DO UPDATE SET app = excluded.app, "
    "version = excluded.version, counter = excluded.counter, channel = excluded.channel, "
    "last_check_at = excluded.last_check_at, last_check_day = excluded.last_check_day"
)
# The whole report batch on PostgreSQL, one statement (one round trip, atomic on its own):
# the events; each device's last report in the inventory (its row locked in key order, as
# the check-ins' batches lock theirs); each counted (device, release) upserted in key order,
# the upsert keeping the state it replaces (prev_state, under the row's lock, so concurrent
# batches count every change once); the counters moved by the changes; the releases' sums
# (the snapshot's, plus this batch's changes). Built from the constant UPDATE_STATES and
# COUNT_SHARDS: no input.
_PG_REPORTS = (
    "WITH ev AS (INSERT INTO events (device_id, kind, detail, at) "  # noqa: S608
    "SELECT d, k, x, %(now)s FROM json_to_recordset(%(ev)s::json) AS e(d integer, k text, "
    "x text)), "
    "st AS (INSERT INTO device_status (device_id, last_report_at, last_event) "
    "SELECT d, %(now)s, e FROM json_to_recordset(%(st)s::json) AS s(d integer, e text) "
    "ORDER BY d ON CONFLICT (device_id) DO UPDATE SET last_report_at = excluded.last_report_at, "
    "last_event = excluded.last_event), "
    "up AS (INSERT INTO device_updates AS du "
    "(device_id, release_id, state, prev_state, reason, first_at, updated_at) "
    "SELECT d, r, st, NULL, why, %(now)s, %(now)s FROM json_to_recordset(%(rows)s::json) "
    "AS v(d integer, r integer, st text, why text) ORDER BY d, r "
    "ON CONFLICT (device_id, release_id) DO UPDATE SET prev_state = du.state, "
    "state = excluded.state, reason = excluded.reason, updated_at = excluded.updated_at "
    "RETURNING du.device_id, du.release_id, du.prev_state, du.state), "
    "ch AS MATERIALIZED (SELECT release_id AS rid, device_id %% "
    + str(COUNT_SHARDS)
    + " AS shard, "
    + ", ".join(
        f"count(*) FILTER (WHERE state = '{st}') - count(*) FILTER (WHERE prev_state = '{st}')"
        f" AS {st}"
        for st in UPDATE_STATES
    )
    + " FROM up WHERE prev_state IS DISTINCT FROM state GROUP BY 1, 2), "
    "cnt AS (INSERT INTO release_counts (release_id, shard, "
    + ", ".join(UPDATE_STATES)
    + ") SELECT * FROM ch ORDER BY 1, 2 ON CONFLICT (release_id, shard) DO UPDATE SET "
    + ", ".join(f"{st} = release_counts.{st} + excluded.{st}" for st in UPDATE_STATES)
    + "), tot AS (SELECT rid, "
    + ", ".join(f"SUM({st}) AS {st}" for st in UPDATE_STATES)
    + " FROM (SELECT release_id AS rid, "
    + ", ".join(UPDATE_STATES)
    + " FROM release_counts WHERE release_id = ANY(%(rels)s::integer[]) "
    "UNION ALL SELECT rid, " + ", ".join(UPDATE_STATES) + " FROM ch) s GROUP BY rid) "
    "SELECT json_build_array(r.id, r.cohort_size, r.halt_min_attempts, "  # one column: cheap
    "r.halt_max_failure_ratio, r.halt_min_cohort_share, r.halt_base, "  # to describe
    + ", ".join(f"COALESCE(t.{st}, 0)" for st in UPDATE_STATES)
    + ")::text FROM releases r LEFT JOIN tot t ON t.rid = r.id "
    "WHERE r.id = ANY(%(rels)s::integer[])"
)


# A hot-path connection older than this is replaced before its next use (a pooler's or
# firewall's idle limit would otherwise fail the request that finds it dropped).
RECYCLE_SECONDS = 600


class ReleaseStore:
    def __init__(self, registry: Registry, read_pool_size: int = 4) -> None:
        self.registry = registry
        # The hot device lookup: single statements in autocommit (no BEGIN/ROLLBACK round
        # trips), no ping before each use. A connection the database dropped fails one
        # lookup (a 503), and SQLAlchemy replaces the pool's connections.
        self._read_engine = create_engine(
            registry.engine.url,
            pool_size=read_pool_size,
            max_overflow=read_pool_size,
            pool_pre_ping=False,
            pool_recycle=RECYCLE_SECONDS,
            isolation_level="AUTOCOMMIT",
            connect_args=connect_args(registry.engine.url),
        )

    def close(self) -> None:
        self._read_engine.dispose()

    def ping(self) -> None:
        """One round trip to the database; a ``TransportError`` if it does not answer."""
        with self._reading() as conn:
            conn.execute(select(literal(1)))

    # -- releases ----------------------------------------------------------------------

    def publish(self, new: NewRelease) -> ReleaseInfo:
        now = utcnow()
        with self.registry.session() as s:
            dup = s.scalar(
                select(Release.id).where(
                    Release.channel == new.channel,
                    Release.app == new.app,
                    Release.board == new.board,
                    Release.version == new.version,
                )
            )
            if dup is not None:
                raise UsageError(
                    f"{new.app} {new.version} for {new.board} is already published "
                    f"in channel {new.channel} (release {dup}); publish a new version"
                )
            rel = Release(
                app=new.app,
                board=new.board,
                version=new.version,
                counter=new.counter,
                manifest_sha256=new.manifest_sha256,
                file_sha256=new.file_sha256,
                size=new.size,
                channel=new.channel,
                state="active",
                percent=0.0,
                groups="[]",
                created_at=now,
                updated_at=now,
            )
            s.add(rel)
            s.flush()
            if new.key is not None:
                s.add(ReleaseKey(release_id=rel.id, image_sha256=new.key[0], key=new.key[1]))
            for d in new.deltas:
                s.add(
                    ReleaseDelta(
                        release_id=rel.id,
                        from_version=d.from_version,
                        from_file_sha256=d.from_file_sha256,
                        delta_sha256=d.delta_sha256,
                        size=d.size,
                    )
                )
            s.flush()
            return _info(rel, frozenset(), deltas=self._deltas(s, [rel.id]).get(rel.id, ()))

    def field_artifacts(self, app: str, board: str, exclude_version: str) -> list[tuple[str, str]]:
        """(version, artifact SHA-256) of the releases of ``app`` for ``board`` that devices
        run now (the inventory: their last check), most devices first, at most
        MAX_DELTA_BASES: what a new release gets deltas from."""
        with self.registry.session() as s:
            n = func.count(DeviceStatus.device_id)
            running = list(
                s.execute(
                    select(DeviceStatus.version, n)
                    .join(Device, Device.id == DeviceStatus.device_id)
                    .where(
                        DeviceStatus.app == app,
                        Device.board == board,
                        DeviceStatus.version.is_not(None),
                        DeviceStatus.version != exclude_version,
                    )
                    .group_by(DeviceStatus.version)
                    .order_by(n.desc(), DeviceStatus.version)
                )
            )
            out = []
            for version, _count in running:
                sha = s.scalar(
                    select(Release.file_sha256)
                    .where(Release.app == app, Release.board == board, Release.version == version)
                    .order_by(Release.id.desc())
                    .limit(1)
                )
                if sha is not None:
                    out.append((str(version), str(sha)))
                if len(out) >= MAX_DELTA_BASES:
                    break
            return out

    @staticmethod
    def _deltas(s: Session, ids: Sequence[int]) -> dict[int, tuple[tuple[str, str, int], ...]]:
        out: dict[int, list[tuple[str, str, int]]] = {}
        if ids:
            for rid, f, h, n in s.execute(
                select(
                    ReleaseDelta.release_id,
                    ReleaseDelta.from_version,
                    ReleaseDelta.delta_sha256,
                    ReleaseDelta.size,
                )
                .where(ReleaseDelta.release_id.in_(list(ids)))
                .order_by(ReleaseDelta.id)
            ):
                out.setdefault(int(rid), []).append((str(f), str(h), int(n)))
        return {k: tuple(v) for k, v in out.items()}

    def get(self, release_id: int) -> ReleaseInfo:
        with self.registry.session() as s:
            rel = self._release(s, release_id)
            return self._full_info(s, rel)

    def releases(self, channel: str | None = None, stats: bool = True) -> list[ReleaseInfo]:
        """Every release, oldest first, with its per-device counts (unless ``stats`` is off)."""
        with self.registry.session() as s:
            q = select(Release).order_by(Release.id)
            if channel:
                q = q.where(Release.channel == channel)
            rels = list(s.scalars(q))
            ids = [r.id for r in rels]
            pins = self._pins(s, ids)
            counts = self._stats(s, rels) if stats else {}
            deltas = self._deltas(s, ids)
            halts = self._halts(s, ids)
            return [
                _info(
                    r,
                    pins.get(r.id, frozenset()),
                    counts.get(r.id),
                    deltas.get(r.id, ()),
                    halts.get(r.id, ()),
                )
                for r in rels
            ]

    def views(
        self, channel: str, app: str | None = None, board: str | None = None
    ) -> list[ReleaseView]:
        """The releases of a channel (optionally one app and board), any state, with pins."""
        with self.registry.session() as s:
            q = select(Release).where(Release.channel == channel)
            if app is not None:
                q = q.where(Release.app == app)
            if board is not None:
                q = q.where(Release.board == board)
            rels = list(s.scalars(q))
            pins = self._pins(s, [r.id for r in rels])
            deltas = self._deltas(s, [r.id for r in rels])
            keys = self._keys(s, [r.id for r in rels])
            return [
                _view(r, pins.get(r.id, frozenset()), deltas.get(r.id, ()), keys.get(r.id))
                for r in rels
            ]

    @staticmethod
    def _keys(s: Session, ids: Sequence[int]) -> dict[int, tuple[str, bytes]]:
        if not ids:
            return {}
        rows = s.execute(
            select(ReleaseKey.release_id, ReleaseKey.image_sha256, ReleaseKey.key).where(
                ReleaseKey.release_id.in_(list(ids))
            )
        )
        return {int(rid): (str(sha), bytes(key)) for rid, sha, key in rows}

    def channels(self) -> list[str]:
        with self.registry.session() as s:
            return sorted(s.scalars(select(Release.channel).distinct()))

    def promote(
        self,
        release_id: int,
        *,
        percent: float | None = None,
        group: str | None = None,
        pin: str | None = None,
    ) -> ReleaseInfo:
        """Widen a rollout: set the percentage, add a device group, or pin one device."""
        if sum(x is not None for x in (percent, group, pin)) != 1:
            raise UsageError("promote takes exactly one of percent, group or pin")
        with self.registry.session() as s:
            rel = self._release(s, release_id)
            if rel.state == "halted":
                raise UsageError(
                    f"release {rel.id} ({rel.version}) is halted: {rel.halt_reason}; "
                    "resume it first (with a reason) or publish a fixed version"
                )
            if percent is not None:
                if not 0 <= percent <= 100:
                    raise UsageError(f"percent must be 0..100, not {percent}")
                rel.percent = float(percent)
            elif group is not None:
                groups = set(json.loads(rel.groups)) | {group}
                rel.groups = json.dumps(sorted(groups))
            elif pin is not None:
                self._pin(s, rel, pin)
            rel.cohort_size = self._cohort_size(s, rel)
            rel.updated_at = utcnow()
            s.flush()
            return _info(
                rel,
                self._pins(s, [rel.id]).get(rel.id, frozenset()),
                halts=self._halts(s, [rel.id]).get(rel.id, ()),
            )

    @staticmethod
    def _cohort_size(s: Session, rel: Release) -> int:
        """About how many registered devices the release is offered to: its share of the
        active devices of its board, plus its groups and pins (one count per promote)."""
        s.flush()
        mine = and_(Device.board == rel.board, Device.state == "active")
        n = 0.0
        if rel.percent > 0:
            n += (
                (s.scalar(select(func.count()).select_from(Device).where(mine)) or 0)
                * rel.percent
                / 100.0
            )
        groups = json.loads(rel.groups)
        if groups and rel.percent < 100:
            n += (
                s.scalar(
                    select(func.count()).select_from(Device).where(mine, Device.group.in_(groups))
                )
                or 0
            ) * (1 - rel.percent / 100)
        n += (
            s.scalar(
                select(func.count()).select_from(ReleasePin).where(ReleasePin.release_id == rel.id)
            )
            or 0
        )
        return round(n)

    def _pin(self, s: Session, rel: Release, hardware_id: str) -> None:
        if s.scalar(select(Device.id).where(Device.hardware_id == hardware_id)) is None:
            raise UsageError(f"no device {hardware_id} in the registry; cannot pin it")
        siblings = select(Release.id).where(
            Release.channel == rel.channel, Release.app == rel.app, Release.board == rel.board
        )
        for old in s.scalars(
            select(ReleasePin).where(
                ReleasePin.hardware_id == hardware_id, ReleasePin.release_id.in_(siblings)
            )
        ):
            s.delete(old)  # one pin per device, app, board and channel
        s.flush()
        s.add(ReleasePin(release_id=rel.id, hardware_id=hardware_id, created_at=utcnow()))

    def set_state(
        self, release_id: int, state: str, *, who: str = "", reason: str = ""
    ) -> ReleaseInfo:
        """Pause or resume a rollout.

        A release the server halted is resumed only with a ``reason`` (an admin
        overriding the automatic halt says why; kept in its halt history with ``who``).
        Its halt then counts afresh: from the devices that had not finished with it
        (``ReleaseStats.since_resume``), so the failures that halted it do not halt it
        again at once. Its devices that failed it are still never offered it again.
        A halted release is not paused (it is offered to no one already)."""
        if state not in ("active", "paused"):
            raise UsageError(f"a release can be set active or paused, not {state!r}")
        reason = reason.strip()
        with self.registry.session() as s:
            rel = self._release(s, release_id)
            if rel.state == "halted":
                if state == "paused":
                    raise UsageError(
                        f"release {rel.id} ({rel.version}) is halted (offered to no one): "
                        "resume it with a reason, or publish a fixed version"
                    )
                if len(reason) < RESUME_REASON_MIN:
                    raise UsageError(
                        f"release {rel.id} ({rel.version}) was halted by the server: "
                        f"{rel.halt_reason}; resuming overrides that, so say why "
                        f"(release resume {rel.version} --reason TEXT, or the JSON body "
                        '{"reason": TEXT}); or publish a fixed version'
                    )
                self._resume_halted(s, rel, who, reason[:RESUME_REASON_MAX])
            rel.state = state
            rel.updated_at = utcnow()
            s.flush()
            return self._full_info(s, rel)

    def _resume_halted(self, s: Session, rel: Release, who: str, reason: str) -> None:
        now = utcnow()
        done = self._stats(s, [rel])[rel.id].finished()
        rel.halt_base = json.dumps(
            {
                "confirmed": done.updated,
                "refused": done.refused,
                "rolled_back": done.rolled_back,
                "timed_out": done.trial_timeouts,
            },
            sort_keys=True,
        )
        halt = s.scalar(
            select(ReleaseHalt)
            .where(ReleaseHalt.release_id == rel.id, ReleaseHalt.resumed_at.is_(None))
            .order_by(ReleaseHalt.id.desc())
            .limit(1)
        )
        if halt is None:  # halted before its history was kept
            halt = ReleaseHalt(
                release_id=rel.id, halted_at=rel.updated_at, reason=rel.halt_reason or ""
            )
            s.add(halt)
        halt.resumed_at = now
        halt.resumed_by = who[:64] or "unknown"
        halt.resume_reason = reason
        rel.halt_reason = None

    def halt(self, release_id: int, reason: str) -> bool:
        """Halt a release; False if it already was (several processes may decide at once)."""
        now = utcnow()
        with self.registry.session() as s:
            res = s.execute(
                update(Release)
                .where(Release.id == release_id, Release.state != "halted")
                .values(state="halted", halt_reason=reason[:500], updated_at=now)
            )
            if not res.rowcount:  # type: ignore[attr-defined]
                return False
            s.add(ReleaseHalt(release_id=release_id, halted_at=now, reason=reason[:500]))
            return True

    def stats(self, release_ids: Sequence[int]) -> dict[int, ReleaseStats]:
        """Each release's counts: a sum over its counter rows, never a scan of reports."""
        with self.registry.session() as s:
            rels = list(s.scalars(select(Release).where(Release.id.in_(list(release_ids)))))
            return self._stats(s, rels)

    def set_policy(self, release_id: int, overrides: PolicyOverrides) -> ReleaseInfo:
        with self.registry.session() as s:
            rel = self._release(s, release_id)
            rel.halt_min_attempts = overrides.min_attempts
            rel.halt_max_failure_ratio = overrides.max_failure_ratio
            rel.halt_min_cohort_share = overrides.min_cohort_share
            rel.updated_at = utcnow()
            s.flush()
            return _info(
                rel,
                self._pins(s, [rel.id]).get(rel.id, frozenset()),
                self._stats(s, [rel]).get(rel.id),
                halts=self._halts(s, [rel.id]).get(rel.id, ()),
            )

    def _full_info(self, s: Session, rel: Release) -> ReleaseInfo:
        """``rel`` with its pins, per-device counts, deltas and halt history."""
        return _info(
            rel,
            self._pins(s, [rel.id]).get(rel.id, frozenset()),
            self._stats(s, [rel]).get(rel.id),
            self._deltas(s, [rel.id]).get(rel.id, ()),
            self._halts(s, [rel.id]).get(rel.id, ()),
        )

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
            for rid, hw in s.execute(
                select(ReleasePin.release_id, ReleasePin.hardware_id).where(
                    ReleasePin.release_id.in_(list(ids))
                )
            ):
                out.setdefault(rid, set()).add(hw)
        return {k: frozenset(v) for k, v in out.items()}

    @staticmethod
    def _halts(s: Session, ids: Sequence[int]) -> dict[int, tuple[HaltRecord, ...]]:
        out: dict[int, list[HaltRecord]] = {}
        if ids:
            for h in s.scalars(
                select(ReleaseHalt)
                .where(ReleaseHalt.release_id.in_(list(ids)))
                .order_by(ReleaseHalt.id)
            ):
                out.setdefault(h.release_id, []).append(
                    HaltRecord(
                        _aware(h.halted_at),
                        h.reason,
                        None if h.resumed_at is None else _aware(h.resumed_at),
                        h.resumed_by,
                        h.resume_reason,
                    )
                )
        return {k: tuple(v) for k, v in out.items()}

    @staticmethod
    def _stats(s: Session, rels: Sequence[Release]) -> dict[int, ReleaseStats]:
        if not rels:
            return {}
        cols = [func.sum(getattr(ReleaseCount, st)) for st in UPDATE_STATES]
        rows = s.execute(
            select(ReleaseCount.release_id, *cols)
            .where(ReleaseCount.release_id.in_([r.id for r in rels]))
            .group_by(ReleaseCount.release_id)
        )
        counts = {
            int(row[0]): dict(zip(UPDATE_STATES, (int(v or 0) for v in row[1:]), strict=True))
            for row in rows
        }
        out = {}
        for r in rels:
            c = counts.get(r.id, {})
            out[r.id] = ReleaseStats(
                attempts=sum(c.values()),
                updated=c.get("confirmed", 0),
                refused=c.get("refused", 0),
                rolled_back=c.get("rolled_back", 0),
                trial_timeouts=c.get("timed_out", 0),
                cohort=int(r.cohort_size or 0),
                base=_base(r.halt_base),
            )
        return out

    # -- devices -------------------------------------------------------------------------

    def device(
        self, *, token_hash: str | None = None, fingerprint: str | None = None
    ) -> DeviceView | None:
        """The active device with this token hash or certificate fingerprint, or None."""
        if token_hash:
            return self.devices(token_hashes=[token_hash]).get(("token", token_hash))
        if fingerprint:
            fp = fingerprint.lower()
            return self.devices(fingerprints=[fp]).get(("cert", fp))
        return None

    def devices(
        self, token_hashes: Sequence[str] = (), fingerprints: Sequence[str] = ()
    ) -> dict[tuple[str, str], DeviceView]:
        """Many devices at once, keyed ("token", hash) or ("cert", fingerprint); one indexed
        query per kind (batched by the server when many devices check at the same time).

        The same rule as ``Registry.is_allowed``: an active device; for a certificate,
        one that is valid and not expired. A certificate of no device is no device.
        """
        return {
            key: device_view(row)
            for key, row in self.device_rows(token_hashes, fingerprints).items()
        }

    def device_rows(
        self, token_hashes: Sequence[str] = (), fingerprints: Sequence[str] = ()
    ) -> dict[tuple[str, str], DeviceRow]:
        """``devices`` as flat tuples (id, hardware_id, group, failed release ids sorted,
        board): what the server caches, made here without a DeviceView per device."""
        now = utcnow().timestamp()
        return {
            key: row
            for key, (row, expires) in self.credential_rows(token_hashes, fingerprints).items()
            if expires is None or expires >= now
        }

    def credential_rows(
        self, token_hashes: Sequence[str] = (), fingerprints: Sequence[str] = ()
    ) -> dict[tuple[str, str], Credential]:
        """Each credential of an active device (a valid certificate, expired or not) with
        its ``DeviceRow`` and, for a certificate, when it expires (Unix time; ``None``
        for a token): what ``device_rows`` filters and the server's directory keeps."""
        found: dict[tuple[str, str], list[Sequence[Any]]] = {}  # the driver's rows
        if self.registry.engine.dialect.name == "postgresql":
            # one statement per 500 keys of a kind, rows as tuples (key, id, hardware_id,
            # group, failed release or NULL, board[, not_after])
            with self._pg_cursor() as cur:
                for chunk in _chunks(list(token_hashes), 500):
                    cur.execute(_PG_BY_TOKEN, (",".join(chunk),))
                    _gather(found, "token", cur.fetchall())
                for chunk in _chunks([f.lower() for f in fingerprints], 500):
                    cur.execute(_PG_BY_FINGERPRINT, (",".join(chunk),))
                    _gather(found, "cert", cur.fetchall())
        else:
            with self._reading() as conn:
                for chunk in _chunks(list(token_hashes), 500):
                    for row in conn.execute(_BY_TOKEN, {"keys": chunk}):
                        found.setdefault(("token", str(row[0])), []).append(row)
                for chunk in _chunks([f.lower() for f in fingerprints], 500):
                    for cert_row in conn.execute(_BY_FINGERPRINT, {"keys": chunk}):
                        found.setdefault(("cert", str(cert_row[0])), []).append(cert_row)
        return {key: _credential(rows) for key, rows in found.items()}

    def directory_page(
        self, after_id: int, limit: int
    ) -> tuple[dict[tuple[str, str], Credential], int | None]:
        """The credentials of the next ``limit`` active devices by id after ``after_id``
        (PostgreSQL; the same rows as ``credential_rows``), and the last id read (``None``:
        no more devices)."""
        found: dict[tuple[str, str], list[Sequence[Any]]] = {}
        with self._pg_cursor() as cur:
            cur.execute(_PG_PAGE, (after_id, limit))
            ids = [r[0] for r in cur.fetchall()]
            if not ids:
                return {}, None
            cur.execute(_PG_PAGE_TOKENS, (ids,))
            _gather(found, "token", cur.fetchall())
            cur.execute(_PG_PAGE_CERTS, (ids,))
            _gather(found, "cert", cur.fetchall())
        return {key: _credential(rows) for key, rows in found.items()}, ids[-1]

    def device_changes(self, since_xid: int | None) -> tuple[int, list[DeviceChange]]:
        """PostgreSQL: the oldest transaction still running now (what the next call
        passes), and the changes of devices by transactions from ``since_xid`` on (all
        those this caller's last read may not have seen; ``None``: none, only the first):
        ``(device, None, False)`` the device changed, ``(device, release, failed)`` that
        release entered (True) or left the device's failed releases."""
        with self._pg_cursor() as cur:
            cur.execute(_PG_CHANGES, (_NO_XID if since_xid is None else since_xid,))
            rows = cur.fetchall()
        xmin = next(int(r[0]) for r in rows if r[0] is not None)
        return xmin, [
            (int(r[1]), None, False) if r[2] is None else (int(r[1]), int(r[2]), bool(r[3]))
            for r in rows
            if r[0] is None
        ]

    def prune_device_changes(self, older_than_seconds: float) -> int:
        """Delete the device changes older than this (PostgreSQL); how many went."""
        if self.registry.engine.dialect.name != "postgresql":
            return 0
        with self._pg_cursor() as cur:
            cur.execute(_PG_PRUNE_CHANGES, (older_than_seconds,))
            return int(cur.rowcount or 0)

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A plain connection for the hot read path (no ORM session), errors translated."""
        try:
            with self._read_engine.connect() as conn:
                yield conn
        except SQLAlchemyError as e:
            raise TransportError(_db_error(e)) from None

    @contextmanager
    def _pg_cursor(self) -> Iterator[Any]:
        """A psycopg cursor on one of the hot path's pooled autocommit connections, for the
        hot statements (device lookups, report batches, the inventory), which are plain SQL
        text: SQLAlchemy's execution layer cost as much Python as the driver and the round
        trip together (a report batch of 5: ~400 us of the worker thread's CPU with it,
        ~190 us without). Errors as in ``_reading``: a ``TransportError``; when a
        connection broke, the pool starts afresh (a restarted database: one failure)."""
        import psycopg

        try:
            fairy = self._read_engine.raw_connection()
        except (SQLAlchemyError, psycopg.Error) as e:  # the pool's connect: the driver's own
            raise TransportError(_db_error(e)) from None
        conn: Any = fairy.driver_connection
        try:
            with conn.cursor() as cur:
                yield cur
        except psycopg.Error as e:
            if conn.broken or conn.closed:  # the database went away: as SQLAlchemy does on a
                fairy.invalidate()  # disconnect, the pool's other connections go too
                self._read_engine.dispose()
            raise TransportError(_db_error(e)) from None
        finally:
            fairy.close()

    def record_reports(
        self, reports: Sequence[Report]
    ) -> dict[int, tuple[ReleaseStats, PolicyOverrides]]:
        """Store reports from many devices in one transaction: an event each, and for the
        ones that count, each device's state for the release and the release's
        counters (the change from the device's old state to its new one). Returns the
        counts of each release a counted report was about, to decide on halting.
        Rows are locked in one order (sorted keys), so concurrent batches cannot deadlock."""
        if not reports:
            return {}
        if self.registry.engine.dialect.name == "postgresql":
            return self._record_reports_pg(reports)
        now = utcnow()
        with self.registry.session() as s:
            s.connection().execute(
                insert(cast(Table, Event.__table__)),
                [
                    {
                        "device_id": r.device_id,
                        "kind": f"update-{r.event}",
                        "at": now,
                        "detail": report_detail(r),
                    }
                    for r in reports
                ],
            )
            s.connection().execute(
                self._status_upsert(["last_report_at", "last_event"]),
                [
                    {"device_id": d, "last_report_at": now, "last_event": e}
                    for d, e in _last_events(reports)
                ],
            )
            final: dict[tuple[int, int], Report] = {}
            for r in reports:
                if r.release_id is not None:
                    final[(r.device_id, r.release_id)] = r
            if not final:
                return {}
            keys = sorted(final)
            ins = _insert_for(self.registry.engine.dialect.name)(_DU)
            created = {
                (int(d), int(rid))
                for d, rid in s.connection().execute(
                    ins.on_conflict_do_nothing(
                        index_elements=["device_id", "release_id"]
                    ).returning(_DU.c.device_id, _DU.c.release_id),
                    [
                        {
                            "device_id": d,
                            "release_id": rid,
                            "state": final[(d, rid)].event,
                            "reason": final[(d, rid)].reason[:200],
                            "first_at": now,
                            "updated_at": now,
                        }
                        for d, rid in keys
                    ],
                )
            }
            deltas: dict[tuple[int, int], dict[str, int]] = {}

            def bump(device_id: int, release_id: int, state: str, by: int) -> None:
                d = deltas.setdefault(
                    (release_id, device_id % COUNT_SHARDS), dict.fromkeys(UPDATE_STATES, 0)
                )
                d[state] += by

            for d, rid in created:
                bump(d, rid, final[(d, rid)].event, 1)
            rest = [k for k in keys if k not in created]
            if rest:
                q = (
                    select(DeviceUpdate.device_id, DeviceUpdate.release_id, DeviceUpdate.state)
                    .where(tuple_(DeviceUpdate.device_id, DeviceUpdate.release_id).in_(rest))
                    .order_by(DeviceUpdate.device_id, DeviceUpdate.release_id)
                )
                if self.registry.engine.dialect.name == "postgresql":
                    q = q.with_for_update()
                old = {(int(d), int(rid)): st for d, rid, st in s.execute(q)}
                s.connection().execute(
                    update(_DU)
                    .where(_DU.c.device_id == bindparam("d"), _DU.c.release_id == bindparam("r"))
                    .values(state=bindparam("st"), reason=bindparam("why"), updated_at=now),
                    [
                        {
                            "d": d,
                            "r": rid,
                            "st": final[(d, rid)].event,
                            "why": final[(d, rid)].reason[:200],
                        }
                        for d, rid in rest
                    ],
                )
                for (d, rid), st in old.items():
                    new = final[(d, rid)].event
                    if st != new:
                        if st in UPDATE_STATES:
                            bump(d, rid, st, -1)
                        bump(d, rid, new, 1)
            self._add_counts(s, deltas)
            rels = list(
                s.scalars(select(Release).where(Release.id.in_(sorted({rid for _, rid in keys}))))
            )
            stats = self._stats(s, rels)
            return {r.id: (stats[r.id], _overrides(r)) for r in rels}

    def _record_reports_pg(
        self, reports: Sequence[Report]
    ) -> dict[int, tuple[ReleaseStats, PolicyOverrides]]:
        """``record_reports`` on PostgreSQL: one statement (``_PG_REPORTS``) over JSON rows,
        in autocommit (no BEGIN, COMMIT or ping round trips), prepared once."""
        with self._pg_cursor() as cur:
            cur.execute(_PG_REPORTS, _pg_report_params(reports))
            return _pg_report_counts(cur.fetchall())

    def report_writer(self) -> AsyncReportWriter | None:
        """What stores report batches from an event loop (PostgreSQL), else None."""
        if self.registry.engine.dialect.name != "postgresql":
            return None
        url = self.registry.engine.url.set(drivername="postgresql")
        return AsyncReportWriter(url.render_as_string(hide_password=False))

    def _add_counts(self, s: Session, deltas: dict[tuple[int, int], dict[str, int]]) -> None:
        if not deltas:
            return
        table = cast(Table, ReleaseCount.__table__)
        stmt = _insert_for(self.registry.engine.dialect.name)(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["release_id", "shard"],
            set_={st: table.c[st] + stmt.excluded[st] for st in UPDATE_STATES},
        )
        s.connection().execute(
            stmt,
            [
                {"release_id": rid, "shard": shard, **d}
                for (rid, shard), d in sorted(deltas.items())
            ],
        )

    def _status_upsert(self, columns: list[str]) -> Executable:
        stmt = _insert_for(self.registry.engine.dialect.name)(cast(Table, DeviceStatus.__table__))
        done: Executable = stmt.on_conflict_do_update(
            index_elements=["device_id"], set_={c: stmt.excluded[c] for c in columns}
        )
        return done

    def record_checkins(self, checkins: Sequence[Checkin]) -> None:
        """The inventory: what devices said in their checks (one row per device, batched)."""
        if not checkins:
            return
        if self.registry.engine.dialect.name == "postgresql":
            self.record_checkin_rows(
                [
                    (c.device_id, (c.app, c.version, c.counter, c.channel, c.at.timestamp()))
                    for c in checkins
                ]
            )
            return
        items = sorted(checkins, key=lambda c: c.device_id)
        with self.registry.session() as s:
            s.connection().execute(
                self._status_upsert(
                    ["app", "version", "counter", "channel", "last_check_at", "last_check_day"]
                ),
                [
                    {
                        "device_id": c.device_id,
                        "app": c.app,
                        "version": c.version,
                        "counter": c.counter,
                        "channel": c.channel,
                        "last_check_at": c.at,
                        "last_check_day": epoch_day(c.at),
                    }
                    for c in items
                ],
            )

    def record_checkin_rows(
        self, rows: Sequence[tuple[int, tuple[str, str, int, str, float]]]
    ) -> None:
        """``record_checkins`` from (device id, (app, version, counter, channel, Unix time)),
        as the server keeps them: no Checkin or datetime per row on PostgreSQL."""
        if not rows:
            return
        if self.registry.engine.dialect.name != "postgresql":
            self.record_checkins(
                [
                    Checkin(d, app, version, counter, channel, datetime.fromtimestamp(at, UTC))
                    for d, (app, version, counter, channel, at) in rows
                ]
            )
            return
        data = json.dumps(
            [
                {"d": d, "a": app, "v": version, "c": counter, "ch": channel, "t": at}
                for d, (app, version, counter, channel, at) in sorted(rows)
            ]
        )
        with self._pg_cursor() as cur:  # one statement in autocommit: atomic alone
            cur.execute(_PG_CHECKINS, (data,))

    def sweep_trials(self, window_seconds: int, limit: int = 5000) -> int:
        """Trials booted longer than ``window_seconds`` ago and never confirmed become
        ``timed_out`` (a failure in the release's counts); how many did now."""
        cutoff = utcnow() - timedelta(seconds=window_seconds)
        with self.registry.session() as s:
            q = (
                select(DeviceUpdate.device_id, DeviceUpdate.release_id)
                .where(DeviceUpdate.state == TRIAL_STATE, DeviceUpdate.updated_at < cutoff)
                .order_by(DeviceUpdate.device_id, DeviceUpdate.release_id)
                .limit(limit)
            )
            if self.registry.engine.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            rows = [(int(d), int(r)) for d, r in s.execute(q)]
            if not rows:
                return 0
            s.connection().execute(
                update(_DU)
                .where(_DU.c.device_id == bindparam("d"), _DU.c.release_id == bindparam("r"))
                .values(state="timed_out"),
                [{"d": d, "r": r} for d, r in rows],
            )
            deltas: dict[tuple[int, int], dict[str, int]] = {}
            for d, r in rows:
                dd = deltas.setdefault((r, d % COUNT_SHARDS), dict.fromkeys(UPDATE_STATES, 0))
                dd[TRIAL_STATE] -= 1
                dd["timed_out"] += 1
            self._add_counts(s, deltas)
            return len(rows)

    def prune_events(self, older_than_days: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` events older than the retention; how many went. They are
        found with no index on ``at`` (migration 0016): the first event not due, bisected
        through the primary key (events are written with the time of writing: ids and times
        rise together), then the due ones before it, oldest first. Each is still deleted
        only if its own time is past the retention, so an event written out of order is
        never deleted early; one from a machine whose clock ran ahead is kept until its own
        time, and may keep the events after it that long."""
        cutoff = utcnow() - timedelta(days=older_than_days)
        with self.registry.session() as s:
            edge = _first_event_not_due(s, cutoff)
            due = select(Event.id).where(Event.id < edge, Event.at < cutoff).order_by(Event.id)
            last = s.scalar(due.offset(limit - 1).limit(1))  # the limit-th due one, if any
            res = s.execute(  # two ranges of the primary key, no join
                delete(Event)
                .where(Event.id < (edge if last is None else last + 1), Event.at < cutoff)
                .execution_options(synchronize_session=False)
            )
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    # -- what every server process shares: artifacts and trust roots ------------------

    def put_artifact(self, file_sha256: str, data: bytes) -> None:
        with self.registry.session() as s:
            stmt = _insert_for(self.registry.engine.dialect.name)(ArtifactBlob)
            s.execute(
                stmt.values(
                    file_sha256=file_sha256, size=len(data), data=data, created_at=utcnow()
                ).on_conflict_do_nothing(index_elements=["file_sha256"])
            )

    def artifact(self, file_sha256: str) -> bytes | None:
        with self.registry.session() as s:
            data = s.scalar(
                select(ArtifactBlob.data).where(ArtifactBlob.file_sha256 == file_sha256)
            )
            return None if data is None else bytes(data)

    def share_roots(self, local: dict[int, bytes]) -> dict[int, bytes]:
        """Store the trust roots this process has that the database lacks; return every
        stored one (the caller verifies them before trusting any)."""
        with self.registry.session() as s:
            known = {
                int(v): bytes(d) for v, d in s.execute(select(StoredRoot.version, StoredRoot.data))
            }
            new = {v: d for v, d in local.items() if v not in known}
            if new:
                stmt = _insert_for(self.registry.engine.dialect.name)(StoredRoot)
                s.execute(
                    stmt.on_conflict_do_nothing(index_elements=["version"]),
                    [{"version": v, "data": d, "created_at": utcnow()} for v, d in new.items()],
                )
                known.update(new)
            return known

    # -- signed timestamps --------------------------------------------------------------

    def timestamp(self, channel: str) -> TimestampRecord | None:
        with self.registry.session() as s:
            row = s.get(SignedTimestamp, channel)
            return None if row is None else _ts_record(row)

    def replace_timestamp(
        self, channel: str, expected_version: int | None, make: Callable[[int], TimestampRecord]
    ) -> TimestampRecord | None:
        """Sign and store a new timestamp for ``channel`` if the stored one is still
        ``expected_version`` (None: there is none yet); None if another process won.

        ``make(version)`` signs; the version comes from the shared counter, so
        versions strictly increase across every process on this database.
        """
        try:
            with self.registry.session() as s:
                version = s.execute(
                    update(Counter)
                    .where(Counter.name == TIMESTAMP_COUNTER)
                    .values(value=Counter.value + 1)
                    .returning(Counter.value)
                ).scalar_one()
                rec = make(int(version))
                values = {
                    "version": rec.version,
                    "issued": rec.issued,
                    "expires": rec.expires,
                    "root_version": rec.root_version,
                    "targets_digest": rec.targets_digest,
                    "data": rec.data,
                }
                if expected_version is None:
                    stmt = _insert_for(self.registry.engine.dialect.name)(SignedTimestamp)
                    res = s.execute(
                        stmt.values(channel=channel, **values).on_conflict_do_nothing(
                            index_elements=["channel"]
                        )
                    )
                else:
                    res = s.execute(
                        update(SignedTimestamp)
                        .where(
                            SignedTimestamp.channel == channel,
                            SignedTimestamp.version == expected_version,
                        )
                        .values(**values)
                    )
                if not res.rowcount:  # type: ignore[attr-defined]
                    raise _Lost
                return rec
        except _Lost:
            return None


def _view(
    r: Release,
    pins: frozenset[str],
    deltas: tuple[tuple[str, str, int], ...] = (),
    key: tuple[str, bytes] | None = None,
) -> ReleaseView:
    return ReleaseView(
        id=r.id,
        app=r.app,
        board=r.board,
        channel=r.channel,
        version=r.version,
        counter=int(r.counter),
        manifest_sha256=r.manifest_sha256,
        state=r.state,
        percent=float(r.percent),
        groups=frozenset(json.loads(r.groups)),
        pins=pins,
        deltas=deltas,
        key=key,
    )


def _overrides(r: Release) -> PolicyOverrides:
    return PolicyOverrides(r.halt_min_attempts, r.halt_max_failure_ratio, r.halt_min_cohort_share)


def _base(raw: str | None) -> ReleaseStats | None:
    """The finished counts a resumed release's halt starts from (``Release.halt_base``)."""
    if not raw:
        return None
    try:
        d = json.loads(raw)
        n = {
            k: max(0, int(d.get(k, 0)))
            for k in ("confirmed", "refused", "rolled_back", "timed_out")
        }
    except (ValueError, TypeError, AttributeError):
        return None
    return ReleaseStats(
        attempts=sum(n.values()),
        updated=n["confirmed"],
        refused=n["refused"],
        rolled_back=n["rolled_back"],
        trial_timeouts=n["timed_out"],
    )


def _info(
    r: Release,
    pins: frozenset[str],
    stats: ReleaseStats | None = None,
    deltas: tuple[tuple[str, str, int], ...] = (),
    halts: tuple[HaltRecord, ...] = (),
) -> ReleaseInfo:
    return ReleaseInfo(
        _view(r, pins, deltas),
        r.file_sha256,
        int(r.size),
        r.halt_reason if r.state == "halted" else None,
        r.created_at,
        stats or ReleaseStats(cohort=int(r.cohort_size or 0), base=_base(r.halt_base)),
        _overrides(r),
        halts,
    )


def _ts_record(row: SignedTimestamp) -> TimestampRecord:
    return TimestampRecord(
        row.channel,
        int(row.version),
        int(row.issued),
        int(row.expires),
        int(row.root_version),
        row.targets_digest,
        bytes(row.data),
    )


def _insert_for(dialect: str) -> Callable:  # type: ignore[type-arg]
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def report_detail(r: Report) -> str:
    """A report's event detail, the same text on both databases: what ``json.dumps``
    writes for {"version", "reason" (at most 200 characters), "release"}, built without
    the encoder's set-up for each call (a batch of reports made one each)."""
    release = "null" if r.release_id is None else str(int(r.release_id))
    return (
        f'{{"version": {_json_text(r.version)}, "reason": {_json_text(r.reason[:200])}, '
        f'"release": {release}}}'
    )


def _first_event_not_due(s: Session, cutoff: datetime) -> int:
    """The smallest id from which the events are not due by their times (past the last id
    if all are), bisected: ~30 primary-key lookups, whatever the table's size."""
    lo, hi = s.execute(select(func.min(Event.id), func.max(Event.id))).one()
    if lo is None:
        return 0
    hi += 1
    while lo < hi:
        mid = (lo + hi) // 2
        first = s.execute(
            select(Event.id, Event.at).where(Event.id >= mid).order_by(Event.id).limit(1)
        ).first()  # None: pruned meanwhile by another server
        if first is not None and _aware(first.at) < cutoff:
            lo = int(first.id) + 1
        else:
            hi = mid
    return int(lo)


def _last_events(reports: Sequence[Report]) -> list[tuple[int, str]]:
    """The inventory's last report of each device of a batch (device id, event), in key
    order (its rows locked in one order, as the check-ins' are)."""
    return sorted({r.device_id: r.event for r in reports}.items())


def _pg_report_params(reports: Sequence[Report]) -> dict[str, Any]:
    """``_PG_REPORTS``' parameters: every report's event; each device's last report of a
    release it was offered (the one that counts), in key order (rows locked in one order:
    concurrent batches cannot deadlock)."""
    final: dict[tuple[int, int], Report] = {}
    for r in reports:
        if r.release_id is not None:
            final[(r.device_id, r.release_id)] = r  # the last one of a device counts
    keys = sorted(final)
    return {
        "now": utcnow(),
        "st": json.dumps([{"d": d, "e": e} for d, e in _last_events(reports)]),
        "ev": json.dumps(
            [
                {
                    "d": r.device_id,
                    "k": f"update-{r.event}",
                    "x": report_detail(r),
                }
                for r in reports
            ]
        ),
        "rows": json.dumps(
            [
                {"d": k[0], "r": k[1], "st": final[k].event, "why": final[k].reason[:200]}
                for k in keys
            ]
        ),
        "rels": sorted({k[1] for k in keys}),
    }


def _pg_report_counts(
    rows: Sequence[Sequence[Any]],
) -> dict[int, tuple[ReleaseStats, PolicyOverrides]]:
    """``_PG_REPORTS``' answer: each release's counts and halting policy."""
    out: dict[int, tuple[ReleaseStats, PolicyOverrides]] = {}
    for (text,) in rows:
        row = json.loads(text)
        n = {st: int(v) for st, v in zip(UPDATE_STATES, row[6:], strict=True)}
        out[int(row[0])] = (
            ReleaseStats(
                attempts=sum(n.values()),
                updated=n["confirmed"],
                refused=n["refused"],
                rolled_back=n["rolled_back"],
                trial_timeouts=n["timed_out"],
                cohort=int(row[1] or 0),
                base=_base(row[5]),
            ),
            PolicyOverrides(row[2], row[3], row[4]),
        )
    return out


class AsyncReportWriter:
    """``record_reports`` on PostgreSQL from the event loop that calls it: psycopg's own
    asynchronous connections (as many as batches run at once), no worker thread. A batch
    through a worker thread cost the event loop ~1 ms of CPU in thread and GIL hand-overs,
    as much as 30 reports' own work. A connection the database dropped fails its batch (a
    ``TransportError``) and is replaced by the next one."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._idle: list[tuple[Any, float]] = []  # (psycopg.AsyncConnection, opened at)

    async def record_reports(
        self, reports: Sequence[Report]
    ) -> dict[int, tuple[ReleaseStats, PolicyOverrides]]:
        import psycopg

        if not reports:
            return {}
        params = _pg_report_params(reports)
        try:
            conn, opened = await self._connection()
        except psycopg.Error as e:
            raise TransportError(_db_error(e)) from None
        try:
            async with conn.cursor() as cur:
                await cur.execute(_PG_REPORTS, params)
                rows = await cur.fetchall()
        except psycopg.Error as e:
            if conn.broken or conn.closed:
                await conn.close()
                await self.close()  # the database went away: the others too
            else:
                self._idle.append((conn, opened))
            raise TransportError(_db_error(e)) from None
        self._idle.append((conn, opened))
        return _pg_report_counts(rows)

    async def _connection(self) -> tuple[Any, float]:
        import psycopg

        while self._idle:
            conn, opened = self._idle.pop()
            if time.monotonic() - opened < RECYCLE_SECONDS:
                return conn, opened
            await conn.close()
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
        )
        return conn, time.monotonic()

    async def close(self) -> None:
        for conn, _ in self._idle:
            await conn.close()
        self._idle.clear()


def _db_error(e: Exception) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return f"registry database error: {line}"


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _gather(
    found: dict[tuple[str, str], list[Sequence[Any]]], kind: str, rows: Sequence[Sequence[Any]]
) -> None:
    """The driver's rows by credential (a row per failed release of its device)."""
    for row in rows:
        found.setdefault((kind, row[0]), []).append(row)


def _credential(rows: list[Sequence[Any]]) -> Credential:
    """One credential's ``Credential`` from the lookup's rows (key, id, hardware_id, group,
    failed release or NULL, board[, not_after]): a row per failed release."""
    first = rows[0]
    row: DeviceRow = (
        first[1],
        first[2],
        first[3],
        tuple(sorted({r[4] for r in rows if r[4] is not None})),
        first[5],
    )
    return row, (_aware(first[6]).timestamp() if len(first) > 6 else None)


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
