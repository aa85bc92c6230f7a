"""The device registry on SQLite and on a real PostgreSQL: migrations, records, revocation."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from mpseal.errors import TransportError, UsageError
from mpseal.fleet.models import Certificate, Device, Event, Secret
from mpseal.fleet.registry import CertRecord, Identity, Registry, token_hash


def ident(hw: str | None = None, days: int = 365, token: str | None = None) -> Identity:
    return Identity(
        hardware_id=hw or os.urandom(8).hex(), board="esp32",
        cert=CertRecord("device", "CN=dev", os.urandom(16).hex(), os.urandom(32).hex(),
                        datetime.now(timezone.utc) + timedelta(days=days)),
        secrets=(("wifi", "ab" * 32), ("api", "cd" * 32)),
        token_hash=token_hash(token) if token else None)


def test_migrations_create_the_schema_and_are_idempotent(db_url: str) -> None:
    Registry.open(db_url)
    Registry.open(db_url)  # already at head: nothing to do, nothing breaks
    insp = sa.inspect(sa.create_engine(db_url))
    assert {"devices", "certificates", "secrets", "events", "alembic_version"} <= set(
        insp.get_table_names())


def test_identities_are_recorded_all_or_nothing(db_url: str) -> None:
    reg = Registry.open(db_url)
    batch = [ident() for _ in range(50)]
    reg.record_identities(batch)
    assert [reg.count(m) for m in (Device, Certificate, Secret, Event)] == [50, 50, 100, 50]
    # A batch with one conflicting certificate writes nothing at all.
    dup = Identity("fresh-device", "esp32", batch[3].cert)
    with pytest.raises(UsageError, match="registry conflict"):
        reg.record_identities([ident(), dup])
    assert [reg.count(m) for m in (Device, Certificate)] == [50, 50]
    assert reg.find_device("fresh-device") is None


def test_reprovisioning_keeps_one_device_and_replaces_secrets(db_url: str) -> None:
    reg = Registry.open(db_url)
    first = ident("hw-1")
    reg.record_identities([first])
    reg.record_identities([ident("hw-1")])  # redone: a new key and certificate
    assert reg.count(Device) == 1 and reg.count(Certificate) == 2 and reg.count(Secret) == 2


def test_revocation_is_what_the_server_enforces(db_url: str) -> None:
    reg = Registry.open(db_url)
    good, leaked = ident("good", token="t-good"), ident("leaked", token="t-leaked")
    reg.record_identities([good, leaked])
    assert not reg.is_allowed(fingerprint=good.cert.fingerprint)  # not yet provisioned
    reg.mark_active("good")
    reg.mark_active("leaked")
    assert reg.is_allowed(fingerprint=leaked.cert.fingerprint)
    assert reg.is_allowed(token="t-leaked")
    assert reg.revoke_device("leaked", reason="credentials posted online") == 1
    assert not reg.is_allowed(fingerprint=leaked.cert.fingerprint)
    assert not reg.is_allowed(token="t-leaked")
    assert reg.is_allowed(fingerprint=good.cert.fingerprint) and reg.is_allowed(token="t-good")
    with pytest.raises(UsageError, match="is revoked"):
        reg.record_identities([ident("leaked")])
    reg.revoke_certificate(good.cert.serial)
    assert not reg.is_allowed(fingerprint=good.cert.fingerprint)
    kinds = [e.kind for e in reg.events("leaked")]
    assert kinds == ["issued", "provisioned", "revoked"]


def test_expired_certificate_is_refused(db_url: str) -> None:
    reg = Registry.open(db_url)
    old = ident("old", days=-1)
    reg.record_identities([old])
    reg.mark_active("old")
    assert not reg.is_allowed(fingerprint=old.cert.fingerprint)


def test_unknown_device_and_bad_url_are_one_line_errors(tmp_path) -> None:
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    with pytest.raises(UsageError, match="no device nope in the registry"):
        reg.revoke_device("nope")
    with pytest.raises(UsageError, match="cannot use database URL"):
        Registry.open("notadb://x")
    with pytest.raises(TransportError, match="cannot open the registry database"):
        Registry.open("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
