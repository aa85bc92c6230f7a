"""Device log lines (the boot guard's log.txt and the app's own lines) kept per device.

Devices send them in bounded batches (``LINES_MAX`` lines of at most ``LINE_MAX``
characters), at most ``BATCHES_PER_MINUTE`` per device (the server's rate limit);
the server keeps the newest ``KEEP_PER_DEVICE`` lines of each device, for at most the
event retention. Lines are untrusted text: stored as printable ASCII, shown escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import DateTime, ForeignKey, Index, String, Text, delete, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from mpseal.fleet.models import Base, BigId
from mpseal.fleet.registry import Registry

SOURCES = ("guard", "app")
LINES_MAX = 50  # lines in one batch
LINE_MAX = 200  # characters kept of a line
BODY_MAX = 16 * 1024  # bytes of one upload
BATCHES_PER_MINUTE = 6.0
BATCH_BURST = 6
KEEP_PER_DEVICE = 1000


class DeviceLog(Base):
    __tablename__ = "device_logs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(8))
    line: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_device_logs_device", "device_id", "id"),
        Index("ix_device_logs_at", "at"),
    )


PAGE_MAX = 1000  # lines in one page of the admin read API


@dataclass(frozen=True)
class LogLine:
    at: datetime
    source: str
    line: str
    id: int = 0  # its place in the log: pages go back by it

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "at": self.at.isoformat(), "source": self.source, "line": self.line}


def clean(text: str) -> str:
    """Printable ASCII only (control characters and the rest become '?'), at most LINE_MAX."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:LINE_MAX]).rstrip()


def append(
    reg: Registry, device_id: int, lines: Sequence[tuple[str, str]], now: datetime | None = None
) -> int:
    """Store a batch; drop the device's lines beyond the newest KEEP_PER_DEVICE."""
    at = now or datetime.now(UTC)
    rows = [
        {"device_id": device_id, "at": at, "source": src, "line": clean(line)}
        for src, line in lines[:LINES_MAX]
        if src in SOURCES
    ]
    if not rows:
        return 0
    with reg.session() as s:
        s.execute(insert(DeviceLog), rows)
        edge = s.scalar(
            select(DeviceLog.id)
            .where(DeviceLog.device_id == device_id)
            .order_by(DeviceLog.id.desc())
            .offset(KEEP_PER_DEVICE)
            .limit(1)
        )
        if edge is not None:
            s.execute(
                delete(DeviceLog).where(DeviceLog.device_id == device_id, DeviceLog.id <= edge)
            )
    return len(rows)


def recent(reg: Registry, device_id: int, limit: int = 100) -> list[LogLine]:
    """The device's newest lines, oldest first."""
    with reg.session() as s:
        rows = s.execute(
            select(DeviceLog.at, DeviceLog.source, DeviceLog.line)
            .where(DeviceLog.device_id == device_id)
            .order_by(DeviceLog.id.desc())
            .limit(limit)
        ).all()
    return [
        LogLine(at if at.tzinfo else at.replace(tzinfo=UTC), src, line)
        for at, src, line in reversed(rows)
    ]


def page(
    reg: Registry, device_id: int, before: int | None = None, limit: int = 100
) -> list[LogLine]:
    """The device's lines newest first, at most ``limit`` (1..PAGE_MAX); ``before``: the
    id to page back from (keyset: every page costs the same)."""
    with reg.session() as s:
        q = (
            select(DeviceLog.id, DeviceLog.at, DeviceLog.source, DeviceLog.line)
            .where(DeviceLog.device_id == device_id)
            .order_by(DeviceLog.id.desc())
            .limit(max(1, min(limit, PAGE_MAX)))
        )
        if before is not None:
            q = q.where(DeviceLog.id < before)
        rows = s.execute(q).all()
    return [
        LogLine(at if at.tzinfo else at.replace(tzinfo=UTC), src, line, int(i))
        for i, at, src, line in rows
    ]


def prune(reg: Registry, older_than_days: float, limit: int = 10_000) -> int:
    """Delete up to ``limit`` lines older than the retention; how many were deleted."""
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    with reg.session() as s:
        ids = list(
            s.scalars(
                select(DeviceLog.id)
                .where(DeviceLog.at < cutoff)
                .order_by(DeviceLog.id)
                .limit(limit)
            )
        )
        if ids:
            s.execute(delete(DeviceLog).where(DeviceLog.id.in_(ids)))
    return len(ids)
