"""Device certificates over their lifetime: renewals recorded per device, and the fleet's
expiry (which certificates lapse soon, which devices missed their renewal).

Every certificate a device ever held stays a row of ``certificates`` (serial, fingerprint,
validity, ``issued_via``): the registry knows every serial per device. The expiry report
reads only certificates that end before a horizon (``ix_certificates_not_after``) and
drops those a newer certificate of the same device outlives
(``ix_certificates_device_not_after``): its cost follows the number of lapsing
certificates, not the fleet's size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from mpseal.fleet.models import Certificate, Device, Event
from mpseal.fleet.registry import CertRecord, Registry

RENEW_FRACTION = 2 / 3  # a device renews once this share of its certificate's life is past
EXPIRY_PAGE_MAX = 5000


@dataclass(frozen=True)
class Lapsing:
    hardware_id: str
    state: str  # expired | renewal_overdue | expiring
    serial: str
    not_after: datetime
    not_before: datetime | None
    issued_via: str | None

    def to_dict(self) -> dict[str, object]:
        return {
            "hardware_id": self.hardware_id,
            "state": self.state,
            "serial": self.serial,
            "not_after": self.not_after.isoformat(),
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "issued_via": self.issued_via,
        }


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def renewal_point(not_before: datetime, not_after: datetime) -> datetime:
    return not_before + (not_after - not_before) * RENEW_FRACTION


def device_state(reg: Registry, device_id: int) -> tuple[str, str] | None:
    """(hardware id, state) of a device, or None."""
    with reg.session() as s:
        d = s.get(Device, device_id)
        return None if d is None else (d.hardware_id, d.state)


def record_renewal(
    reg: Registry,
    device_id: int,
    record: CertRecord,
    not_before: datetime,
    old_fingerprint: str,
    via: str = "renewal",
) -> None:
    """A certificate issued online: a new row (the old certificate stays valid until it
    expires: the device proves the new one before it drops the old) and an event."""
    with reg.session() as s:
        s.add(
            Certificate(
                device_id=device_id,
                role=record.role,
                subject=record.subject,
                serial=record.serial,
                fingerprint=record.fingerprint,
                not_after=record.not_after,
                not_before=not_before,
                issued_via=via,
            )
        )
        s.add(
            Event(
                device_id=device_id,
                kind={"renewal": "renewed", "recovery": "recovered"}[via],
                detail=json.dumps(
                    {
                        "serial": record.serial,
                        "fingerprint": record.fingerprint,
                        "not_after": record.not_after.isoformat(),
                        "previous": old_fingerprint,
                    }
                ),
            )
        )


def log_refusal(reg: Registry, device_id: int | None, reason: str) -> None:
    with reg.session() as s:
        s.add(
            Event(
                device_id=device_id,
                kind="renewal_refused",
                detail=json.dumps({"reason": reason[:200]}),
            )
        )


def certificate(reg: Registry, fingerprint: str) -> Certificate | None:
    with reg.session() as s:
        row = s.scalars(
            sa.select(Certificate).where(Certificate.fingerprint == fingerprint)
        ).first()
        if row is not None:
            s.expunge(row)
        return row


def expiry(
    reg: Registry, now: datetime, within: timedelta, lapsed_for: timedelta, limit: int = 1000
) -> tuple[list[Lapsing], bool]:
    """Active devices whose last issued valid certificate ends before ``now + within`` (and
    not before ``now - lapsed_for``), soonest first, at most ``limit``; and whether there
    are more (no COUNT: it would visit every lapsing certificate)."""
    c, newer = Certificate, sa.orm.aliased(Certificate)
    superseded = sa.exists().where(
        newer.device_id == c.device_id, newer.status == "valid", newer.id > c.id
    )
    query = (
        sa.select(Device.hardware_id, c.serial, c.not_after, c.not_before, c.issued_via)
        .join(Device, Device.id == c.device_id)
        .where(
            c.role == "device",
            c.status == "valid",
            c.not_after < now + within,
            c.not_after >= now - lapsed_for,
            Device.state == "active",
            ~superseded,
        )
        .order_by(c.not_after)
        .limit(limit + 1)
    )
    with reg.session() as s:
        rows = s.execute(query).all()
    out = []
    for hw, serial, not_after, not_before, via in rows[:limit]:
        end = _aware(not_after)
        start = _aware(not_before) if not_before is not None else None
        if end <= now:
            state = "expired"
        elif start is not None and now >= renewal_point(start, end):
            state = "renewal_overdue"
        else:
            state = "expiring"
        out.append(Lapsing(hw, state, serial, end, start, via))
    return out, len(rows) > limit


# -- recovery of a device whose certificate expired (server/enroll.py) --------------------


def new_challenge(reg: Registry, device_id: int, text: str) -> None:
    with reg.session() as s:
        s.add(
            Event(
                device_id=device_id,
                kind="recover_challenge",
                detail=json.dumps({"challenge": text}),
            )
        )


def take_challenge(reg: Registry, device_id: int, text: str, since: datetime) -> bool:
    """Was ``text`` this device's latest challenge, issued after ``since`` and not used yet?
    Marks it used (an event) in the same transaction."""
    with reg.session() as s:
        last = s.execute(
            sa.select(Event.kind, Event.detail)
            .where(
                Event.device_id == device_id,
                Event.kind.in_(("recover_challenge", "recover_used")),
                Event.at >= since,
            )
            .order_by(Event.id.desc())
            .limit(1)
        ).first()
        if (
            last is None
            or last.kind != "recover_challenge"
            or json.loads(last.detail).get("challenge") != text
        ):
            return False
        s.add(Event(device_id=device_id, kind="recover_used", detail="{}"))
        return True


def last_certificate(reg: Registry, device_id: int) -> Certificate | None:
    """The device's last issued certificate (any status)."""
    with reg.session() as s:
        row = s.scalars(
            sa.select(Certificate)
            .where(Certificate.device_id == device_id)
            .order_by(Certificate.id.desc())
            .limit(1)
        ).first()
        if row is not None:
            s.expunge(row)
        return row


def issued_since(reg: Registry, device_id: int, via: str, since: datetime) -> int:
    with reg.session() as s:
        return int(
            s.scalar(
                sa.select(sa.func.count())
                .select_from(Certificate)
                .where(
                    Certificate.device_id == device_id,
                    Certificate.issued_via == via,
                    Certificate.created_at >= since,
                )
            )
            or 0
        )
