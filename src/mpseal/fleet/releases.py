"""The update server's tables (SQLAlchemy 2.0): releases, pins, per-device update status,
signed timestamps and the timestamp version counter. Schema changes go through Alembic
(``migrations/versions/0002_releases.py``).

Nothing here is process state: several stateless server processes share one database.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from mpseal.fleet.models import Base, utcnow

RELEASE_STATES = ("active", "paused", "halted")
# Events a device reports (docs/updates.md); the last one is its status for that release.
REPORT_EVENTS = ("downloaded", "staged", "refused", "booted", "confirmed", "rolled_back")
FAILED_EVENTS = ("refused", "rolled_back")
# A device's state for a release: its last report, or "timed_out" (booted, not confirmed
# within the trial window; set by the server's maintenance round).
UPDATE_STATES = (*REPORT_EVENTS, "timed_out")
TRIAL_STATE = "booted"  # a trial boot, not confirmed yet
_TRIAL_ROWS = text(f"state = '{TRIAL_STATE}'")  # the rows of the index of trials
# Report counters are spread over this many rows per release (device id modulo), so that
# concurrent reports for one release do not all wait on one row lock.
COUNT_SHARDS = 16
TIMESTAMP_COUNTER = "timestamp"


class Release(Base):
    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app: Mapped[str] = mapped_column(String(64))
    board: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(32))
    counter: Mapped[int] = mapped_column(BigInteger)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    file_sha256: Mapped[str] = mapped_column(
        String(64)
    )  # the artifact file: artifacts/<this>.mpseal
    size: Mapped[int] = mapped_column(BigInteger)
    channel: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="active")
    percent: Mapped[float] = mapped_column(Float, default=0.0)  # cohort: [0, 100]
    groups: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of device group names
    halt_reason: Mapped[str | None] = mapped_column(Text)
    cohort_size: Mapped[int] = mapped_column(BigInteger, default=0)  # devices offered, estimated
    halt_min_attempts: Mapped[int | None] = mapped_column(Integer)  # None: the server's policy
    halt_max_failure_ratio: Mapped[float | None] = mapped_column(Float)
    halt_min_cohort_share: Mapped[float | None] = mapped_column(Float)
    # JSON {state: devices} of the finished states (confirmed, refused, rolled_back,
    # timed_out) when the release was last resumed after a halt: its halt counts only
    # what came after (0007). None: never resumed after a halt.
    halt_base: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("channel", "app", "board", "version", name="uq_releases_version"),
        Index("ix_releases_lookup", "channel", "app", "board"),
    )


class ReleaseHalt(Base):
    """One automatic halt of a release, and who resumed it and why (0007): the history
    the release page shows; the audit log has the same actions, hash-chained."""

    __tablename__ = "release_halts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"))
    halted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reason: Mapped[str] = mapped_column(Text)
    resumed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resumed_by: Mapped[str | None] = mapped_column(String(64))
    resume_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_release_halts_release", "release_id", "id"),)


class ReleasePin(Base):
    """A device held on one release (at most one pin per app, board and channel)."""

    __tablename__ = "release_pins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"))
    hardware_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("release_id", "hardware_id", name="uq_release_pins"),
        Index("ix_release_pins_hardware_id", "hardware_id"),
    )


class DeviceUpdate(Base):
    """One device's progress with one release: its last reported event."""

    __tablename__ = "device_updates"

    # ids with no foreign keys: a report locks no device's or release's row (migrations
    # 0014, 0016; neither is ever deleted, and the server read both ids from the database)
    device_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    release_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16))
    # The state before the last change (None: the first report); see migration 0009.
    prev_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str] = mapped_column(String(200), default="")
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        # rows in a trial boot, for the sweep of overdue trials (migration 0013)
        Index(
            "ix_device_updates_trials",
            "device_id",
            "release_id",
            postgresql_where=_TRIAL_ROWS,
            sqlite_where=_TRIAL_ROWS,
        ),
    )


class ReleaseCount(Base):
    """How many devices are in each state for a release, kept up to date as reports arrive
    (one shard of ``COUNT_SHARDS``; a release's counts are the sum of its shards)."""

    __tablename__ = "release_counts"

    release_id: Mapped[int] = mapped_column(
        ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True
    )
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    downloaded: Mapped[int] = mapped_column(BigInteger, default=0)
    staged: Mapped[int] = mapped_column(BigInteger, default=0)
    refused: Mapped[int] = mapped_column(BigInteger, default=0)
    booted: Mapped[int] = mapped_column(BigInteger, default=0)
    confirmed: Mapped[int] = mapped_column(BigInteger, default=0)
    rolled_back: Mapped[int] = mapped_column(BigInteger, default=0)
    timed_out: Mapped[int] = mapped_column(BigInteger, default=0)


class ArtifactBlob(Base):
    """An artifact file, in the database every server process reaches (no shared disk)."""

    __tablename__ = "artifact_blobs"

    file_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StoredRoot(Base):
    """A trust root version any server has seen: all servers agree on the newest one."""

    __tablename__ = "trust_roots"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SignedTimestamp(Base):
    """The current signed timestamp of one channel, as served."""

    __tablename__ = "timestamps"

    channel: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    issued: Mapped[int] = mapped_column(BigInteger)  # unix seconds
    expires: Mapped[int] = mapped_column(BigInteger)
    root_version: Mapped[int] = mapped_column(Integer)
    targets_digest: Mapped[str] = mapped_column(
        String(64)
    )  # SHA-256 of what was signed, minus times
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Counter(Base):
    """Monotonic counters shared by all server processes (bumped with UPDATE ... RETURNING)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class ReleaseKey(Base):
    """The key of an encrypted release (formats/encrypted.py), given at publish time; the
    server wraps it for each device it offers the release to (0008). A secret: whoever
    reads this table and the registry's hardware ids can decrypt the release (T2)."""

    __tablename__ = "release_keys"

    release_id: Mapped[int] = mapped_column(
        ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True
    )
    image_sha256: Mapped[str] = mapped_column(String(64))  # of the stored, encrypted image
    key: Mapped[bytes] = mapped_column(LargeBinary)


class ReleaseDelta(Base):
    """A delta (formats/delta.py) that rebuilds a release from an older one devices run,
    made at publish time; its bytes are an ArtifactBlob named by their SHA-256 (0006)."""

    __tablename__ = "release_deltas"
    __table_args__ = (UniqueConstraint("release_id", "from_version", name="uq_release_delta"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(
        ForeignKey("releases.id", ondelete="CASCADE"), index=True
    )
    from_version: Mapped[str] = mapped_column(String(32))
    from_file_sha256: Mapped[str] = mapped_column(String(64))
    delta_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
