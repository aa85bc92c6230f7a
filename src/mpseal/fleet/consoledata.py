"""What the console shows, as server-side aggregates that stay cheap at a million devices:
grouped counts over indexed columns, keyset pages, and release samples (a rollout's
counts over time, written by the server only when they changed, with a gap that grows
with the rollout's age so a release has a few hundred samples however long it runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, String, case, func, select
from sqlalchemy.orm import Mapped, mapped_column

from mpseal.fleet.models import Base, BigId, Certificate, Device, DeviceStatus, Event
from mpseal.fleet.registry import Registry
from mpseal.fleet.releasestore import ReleaseInfo

SAMPLE_MIN_GAP = 5.0  # seconds between two samples of a release, at least
SAMPLES_PER_RELEASE = 300  # the gap grows so a release has about this many
CHART_POINTS = 200
LAST_SEEN = (("1 hour", 3600), ("1 day", 86400), ("7 days", 7 * 86400), ("30 days", 30 * 86400))


class ReleaseSample(Base):
    __tablename__ = "release_samples"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    offered: Mapped[int] = mapped_column(BigInteger)
    staged: Mapped[int] = mapped_column(BigInteger)
    confirmed: Mapped[int] = mapped_column(BigInteger)
    rolled_back: Mapped[int] = mapped_column(BigInteger)
    refused: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))

    __table_args__ = (Index("ix_release_samples_release", "release_id", "at"),)


SERIES = ("offered", "staged", "confirmed", "rolled_back", "refused")


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def counts_of(info: ReleaseInfo) -> dict[str, int]:
    s = info.stats
    return {
        "offered": s.cohort,
        "staged": s.in_progress,
        "confirmed": s.updated,
        "rolled_back": s.rolled_back + s.trial_timeouts,
        "refused": s.refused,
    }


def sample_releases(reg: Registry, infos: list[ReleaseInfo], now: datetime | None = None) -> int:
    """Write a sample for each promoted release whose counts or state changed since its
    last sample (and whose gap has passed); how many were written."""
    now = now or datetime.now(UTC)
    todo = [i for i in infos if i.view.promoted or i.stats.attempts]
    if not todo:
        return 0
    ids = [i.view.id for i in todo]
    with reg.session() as s:
        last_ids = (
            select(func.max(ReleaseSample.id))
            .where(ReleaseSample.release_id.in_(ids))
            .group_by(ReleaseSample.release_id)
        )
        last = {
            r.release_id: r
            for r in s.scalars(select(ReleaseSample).where(ReleaseSample.id.in_(last_ids)))
        }
        first = dict(
            s.execute(
                select(ReleaseSample.release_id, func.min(ReleaseSample.at))
                .where(ReleaseSample.release_id.in_(ids))
                .group_by(ReleaseSample.release_id)
            ).all()
        )
        n = 0
        for info in todo:
            c = counts_of(info)
            prev = last.get(info.view.id)
            if prev is not None:
                same = (
                    all(getattr(prev, k) == v for k, v in c.items())
                    and prev.state == info.view.state
                )
                age = (now - _aware(first[info.view.id])).total_seconds()  # type: ignore[operator]
                gap = max(SAMPLE_MIN_GAP, age / SAMPLES_PER_RELEASE)
                if same or (now - _aware(prev.at)).total_seconds() < gap:  # type: ignore[operator]
                    continue
            s.add(ReleaseSample(release_id=info.view.id, at=now, state=info.view.state, **c))
            n += 1
    return n


@dataclass(frozen=True)
class Sample:
    at: datetime
    counts: dict[str, int]
    state: str


def samples(reg: Registry, release_id: int, points: int = CHART_POINTS) -> list[Sample]:
    """The release's samples, thinned to about ``points`` evenly spaced ones (the last
    one always kept)."""
    with reg.session() as s:
        total = int(
            s.scalar(select(func.count()).where(ReleaseSample.release_id == release_id)) or 0
        )
        q = (
            select(ReleaseSample)
            .where(ReleaseSample.release_id == release_id)
            .order_by(ReleaseSample.at, ReleaseSample.id)
        )
        rows = list(s.scalars(q))
    if total > points:
        step = total / points
        keep = {int(i * step) for i in range(points)} | {total - 1}
        rows = [r for i, r in enumerate(rows) if i in keep]
    return [
        Sample(_aware(r.at), {k: int(getattr(r, k)) for k in SERIES}, r.state)  # type: ignore[arg-type]
        for r in rows
    ]


def fleet_overview(reg: Registry, now: datetime | None = None) -> dict[str, object]:
    """Devices by state, by running (app, version), and by when last seen."""
    now = now or datetime.now(UTC)
    with reg.session() as s:
        by_state = dict(s.execute(select(Device.state, func.count()).group_by(Device.state)).all())
        # one pass over the inventory: per running version, its count and its last-seen
        # buckets (summed over the versions below)
        buckets = [
            func.sum(
                case((DeviceStatus.last_check_at >= now - timedelta(seconds=secs), 1), else_=0)
            )
            for _, secs in LAST_SEEN
        ]
        rows = s.execute(
            select(
                DeviceStatus.app,
                DeviceStatus.version,
                func.count(),
                func.count(DeviceStatus.last_check_at),
                *buckets,
            ).group_by(DeviceStatus.app, DeviceStatus.version)
        ).all()
        by_version = sorted(
            ((a, v, int(n)) for a, v, n, *_ in rows), key=lambda r: (-r[2], r[0] or "", r[1] or "")
        )[:50]
        reported = sum(int(r[3] or 0) for r in rows)
        seen = [
            (label, sum(int(r[4 + i] or 0) for r in rows)) for i, (label, _) in enumerate(LAST_SEEN)
        ]
    total = sum(int(v) for v in by_state.values())
    return {
        "total": total,
        "by_state": {k: int(v) for k, v in sorted(by_state.items())},
        "by_version": by_version,
        "seen": seen,
        "never_seen": total - reported,
    }


def device_history(reg: Registry, device_id: int, limit: int = 50) -> list[dict[str, object]]:
    """The device's update reports (what it ran and took), newest first."""
    with reg.session() as s:
        rows = s.execute(
            select(Event.at, Event.kind, Event.detail)
            .where(Event.device_id == device_id)
            .order_by(Event.id.desc())
            .limit(limit)
        ).all()
    out = []
    for at, kind, detail in rows:
        try:
            d = json.loads(detail)
        except ValueError:
            d = {}
        d = d if isinstance(d, dict) else {}
        out.append(
            {
                "at": _aware(at),
                "kind": kind,
                "version": d.get("version") or "",
                "reason": d.get("reason") or "",
            }
        )
    return out


def certificates_of(reg: Registry, device_id: int) -> list[dict[str, object]]:
    with reg.session() as s:
        rows = s.execute(
            select(
                Certificate.serial,
                Certificate.not_after,
                Certificate.status,
                Certificate.issued_via,
            )
            .where(Certificate.device_id == device_id)
            .order_by(Certificate.id.desc())
            .limit(20)
        ).all()
    return [
        {"serial": serial, "not_after": _aware(na), "status": st, "issued_via": via or ""}
        for serial, na, st, via in rows
    ]


def expiry_timeline(
    reg: Registry, now: datetime | None = None, weeks: int = 12
) -> list[tuple[datetime, int]]:
    """Valid device certificates ending in each week from now (the first bucket also holds
    the ones already expired): one indexed range count per week."""
    now = now or datetime.now(UTC)
    out = []
    with reg.session() as s:
        for w in range(weeks):
            start, end = now + timedelta(weeks=w), now + timedelta(weeks=w + 1)
            q = (
                select(func.count())
                .select_from(Certificate)
                .where(
                    Certificate.role == "device",
                    Certificate.status == "valid",
                    Certificate.not_after < end,
                )
            )
            if w:
                q = q.where(Certificate.not_after >= start)
            out.append((start, int(s.scalar(q) or 0)))
    return out
