"""The device registry's tables (SQLAlchemy 2.0). Schema changes go through Alembic."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

DEVICE_STATES = ("provisioning", "active", "revoked")
CERT_STATUSES = ("valid", "revoked")


def utcnow() -> datetime:
    return datetime.now(UTC)


DAY_SECONDS = 86400


def epoch_day(at: datetime) -> int:
    """The UTC day of ``at``, in days since 1970-01-01 (``device_status.last_check_day``)."""
    return int(at.timestamp() // DAY_SECONDS)


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hardware_id: Mapped[str] = mapped_column(String(64), unique=True)  # machine.unique_id() hex
    board: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="provisioning")
    group: Mapped[str] = mapped_column("group_name", String(64), default="default")
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)  # SHA-256 of its token
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    certificates: Mapped[list[Certificate]] = relationship(back_populates="device")
    secrets: Mapped[list[Secret]] = relationship(back_populates="device")

    __table_args__ = (Index("ix_devices_group", "group_name", "id"),)


class Certificate(Base):
    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # device | server | ca
    subject: Mapped[str] = mapped_column(String(255))
    serial: Mapped[str] = mapped_column(String(64), unique=True)  # hex
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the DER, hex
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="valid")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # 0004
    issued_via: Mapped[str | None] = mapped_column(String(16))  # provision | renewal (0004)

    device: Mapped[Device | None] = relationship(back_populates="certificates")

    __table_args__ = (
        Index("ix_certificates_not_after", "not_after"),
        Index("ix_certificates_device_not_after", "device_id", "not_after"),
    )


class Secret(Base):
    """Which secret a device holds: name and a fingerprint, never the value."""

    __tablename__ = "secrets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    name: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of the plaintext, hex
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    device: Mapped[Device] = relationship(back_populates="secrets")

    __table_args__ = (Index("ix_secrets_device_name", "device_id", "name", unique=True),)


# 64-bit on PostgreSQL; SQLite's INTEGER PRIMARY KEY is its 64-bit rowid already.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Event(Base):
    """What happened (issued, provisioned, revoked, update reports). Kept
    ``event_retention_days`` by the update server (see ``ReleaseStore.prune``)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # a device's id, with no foreign key: a report's event locks no device row (migration
    # 0014; devices are never deleted)
    device_id: Mapped[int | None] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    # no index: the retention bisects the ids (ReleaseStore.prune_events, migration 0016)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeviceStatus(Base):
    """The inventory: what a device last said it runs, and when it was last heard from.
    Written by the update server in batches (at most once per device per flush)."""

    __tablename__ = "device_status"

    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    app: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(32))
    counter: Mapped[int | None] = mapped_column(BigInteger)
    channel: Mapped[str | None] = mapped_column(String(32))
    last_check_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The UTC day of last_check_at (days since 1970-01-01), indexed in its place: a device's
    # hourly check-ins change it once a day, so PostgreSQL updates the row in place (HOT,
    # no index entries) the other 23 times (migration 0010).
    last_check_day: Mapped[int | None] = mapped_column(Integer)
    last_report_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_event: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_device_status_version", "version", "device_id"),
        Index("ix_device_status_last_check_day", "last_check_day"),
    )
