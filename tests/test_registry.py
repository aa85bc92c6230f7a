"""The device registry on SQLite and on a real PostgreSQL: migrations, records, revocation."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from mpseal.errors import TransportError, UsageError
from mpseal.fleet.models import Certificate, Device, Event, Secret
from mpseal.fleet.registry import CertRecord, Identity, Registry, token_hash


def ident(hw: str | None = None, days: int = 365, token: str | None = None) -> Identity:
    return Identity(
        hardware_id=hw or os.urandom(8).hex(),
        board="esp32",
        cert=CertRecord(
            "device",
            "CN=dev",
            os.urandom(16).hex(),
            os.urandom(32).hex(),
            datetime.now(UTC) + timedelta(days=days),
        ),
        secrets=(("wifi", "ab" * 32), ("api", "cd" * 32)),
        token_hash=token_hash(token) if token else None,
    )


def test_migrations_create_the_schema_and_are_idempotent(db_url: str) -> None:
    Registry.open(db_url)
    Registry.open(db_url)  # already at head: nothing to do, nothing breaks
    insp = sa.inspect(sa.create_engine(db_url))
    assert {"devices", "certificates", "secrets", "events", "alembic_version"} <= set(
        insp.get_table_names()
    )


def test_the_migrated_schema_is_the_models_and_report_rows_lock_no_device(db_url: str) -> None:
    """Migrations and models agree (one source of truth for the schema), and the rows a
    report writes (its event, the device's state in the release) keep no foreign key to
    ``devices`` or ``releases`` (migrations 0014, 0016: checking one locked the device's row,
    or the release's row that all its reports share, for every report)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import mpseal.fleet.auditlog
    import mpseal.fleet.certstore
    import mpseal.fleet.consoledata
    import mpseal.fleet.devicelogs
    import mpseal.fleet.releases  # noqa: F401 - every table in Base.metadata
    from mpseal.fleet.models import Base

    Registry.open(db_url)
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        # device_changes: PostgreSQL's feed of changed devices, its triggers' own (0011),
        # not reflected at all (its xid8 column is a type SQLAlchemy does not know)
        def ours(name: str | None, kind: str, *_: object) -> bool:
            return not (kind == "table" and name == "device_changes")

        context = MigrationContext.configure(conn, opts={"include_name": ours})
        diffs = compare_metadata(context, Base.metadata)
        insp = sa.inspect(conn)
        keys = {
            table: [
                (fk["constrained_columns"], fk["referred_table"])
                for fk in insp.get_foreign_keys(table)
            ]
            for table in ("events", "device_updates")
        }
    engine.dispose()
    assert diffs == []
    assert keys == {"events": [], "device_updates": []}


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


def _import_file(path, n: int, start: int = 0, bad_line: int | None = None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A CSV of ``n`` identities issued elsewhere; returns hardware id -> token."""
    tokens = {}
    until = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    lines = ["hardware_id,board,fingerprint,serial,not_after,token_sha256"]
    for i in range(start, start + n):
        hw = f"imp-{i:07d}"
        tokens[hw] = f"tok-{hw}"
        fp = "nothex" if i - start == bad_line else os.urandom(32).hex()
        lines.append(f"{hw},esp32,{fp},{os.urandom(8).hex()},{until},{token_hash(tokens[hw])}")
    path.write_text("\n".join(lines) + "\n")
    return tokens


def test_registry_import_is_all_or_nothing_and_activates_in_bulk(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import run_mpseal

    from mpseal.fleet.releasestore import ReleaseStore

    Registry.open(db_url).engine.dispose()
    good = tmp_path / "ids.csv"
    tokens = _import_file(good, 3000)
    res = run_mpseal("registry", "import", good, "--db", db_url, "--json")
    assert res.returncode == 0, res.stderr
    assert '"imported": 3000' in res.stdout
    reg = Registry.open(db_url)
    assert reg.count(Device) == 3000 and reg.count(Certificate) == 3000
    assert {d.state for d in reg.devices()} == {"provisioning"}

    # A bad row (line 502), a device already registered, the same device twice: exit 3 or 4,
    # one line, nothing written.
    bad = tmp_path / "bad.csv"
    _import_file(bad, 600, start=5000, bad_line=500)
    res = run_mpseal("registry", "import", bad, "--db", db_url)
    assert res.returncode == 3 and "line 502" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    again = tmp_path / "again.jsonl"
    _import_file(tmp_path / "x.csv", 2, start=2999)  # imp-0002999 exists already
    import csv
    import json

    rows = list(csv.DictReader((tmp_path / "x.csv").open()))
    again.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_mpseal("registry", "import", again, "--db", db_url)
    assert res.returncode != 0 and "imp-0002999" in res.stderr and "nothing" in res.stderr
    assert reg.count(Device) == 3000 and reg.count(Certificate) == 3000

    # Bulk activation; the imported token then authenticates the device on the server.
    store = ReleaseStore(reg)
    assert store.device(token_hash=token_hash(tokens["imp-0000007"])) is None
    res = run_mpseal("registry", "activate", "imp-0000007", "imp-0000008", "--db", db_url)
    assert res.returncode == 0 and "Activated 2" in res.stdout, res.stderr
    view = store.device(token_hash=token_hash(tokens["imp-0000007"]))
    assert view is not None and view.hardware_id == "imp-0000007" and view.board == "esp32"
    res = run_mpseal("registry", "activate", "--all", "--db", db_url)
    assert "Activated 2998" in res.stdout, res.stderr
    store.close()
    reg.engine.dispose()
