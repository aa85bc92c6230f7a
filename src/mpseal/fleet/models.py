"""The device registry's tables (SQLAlchemy 2.0). Schema changes go through Alembic."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

DEVICE_STATES = ("provisioning", "active", "revoked")
CERT_STATUSES = ("valid", "revoked")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)

    certificates: Mapped[list[Certificate]] = relationship(back_populates="device")
    secrets: Mapped[list[Secret]] = relationship(back_populates="device")


class Certificate(Base):
    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"))
    role: Mapped[str] = mapped_column(String(16))  # device | server | ca
    subject: Mapped[str] = mapped_column(String(255))
    serial: Mapped[str] = mapped_column(String(64), unique=True)  # hex
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the DER, hex
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="valid")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    device: Mapped[Device | None] = relationship(back_populates="certificates")


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


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    device: Mapped[Device | None] = relationship()
