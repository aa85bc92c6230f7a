"""The device inventory (issue 11, point 3), on SQLite and PostgreSQL: what each device runs,
its last check-in and report and certificate expiry, listed and filtered through the admin
API (keyset pages, a streamed JSON-lines export) and ``mpseal inventory list``; a device's
group changed with ``mpseal device group``, which decides what it is offered."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import run_mpseal
from server_support import (
    ADMIN_TOKEN,
    Keys,
    config_for,
    make_artifact,
    make_keys,
    register,
    running_server,
    schema_at,
)

from mpseal.fleet.models import Certificate, Device, DeviceStatus, epoch_day
from mpseal.fleet.registry import InventoryFilter, Registry
from mpseal.fleet.releasestore import Checkin, ReleaseStore, Report


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


def check(dev: httpx.Client, fleet, hw: str, version: str, counter: int = 1) -> dict:  # type: ignore[no-untyped-def]
    r = dev.post(
        "/v1/device/check",
        headers=fleet.headers(hw),
        json={
            "hardware_id": hw,
            "board": "esp32",
            "app": "hello",
            "version": version,
            "counter": counter,
            "timestamp_version": 0,
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


def cli(url: str, *args: str) -> list[dict]:  # type: ignore[type-arg]
    res = run_mpseal(*args, "--server", url, "--json", env={"MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN})
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def test_inventory_records_checkins_and_reports_and_filters(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(db_url, 30)
    hws = sorted(fleet.tokens)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:  # one certificate about to expire
        dev_id = conn.scalar(sa.select(Device.id).where(Device.hardware_id == hws[3]))
        conn.execute(
            sa.update(Certificate)
            .where(Certificate.device_id == dev_id)
            .values(not_after=datetime.now(UTC) + timedelta(days=5))
        )
    engine.dispose()
    cfg = config_for(db_url, keys, tmp_path, cache_seconds=0.0, inventory_seconds=0.2)
    with running_server(cfg) as srv, srv.admin() as admin, httpx.Client(base_url=srv.url) as dev:
        for hw in hws[:10]:
            check(dev, fleet, hw, "1.0.0")
        for hw in hws[10:15]:
            check(dev, fleet, hw, "1.1.0", 2)
        dev.post(
            "/v1/device/report",
            headers=fleet.headers(hws[12]),
            json={"hardware_id": hws[12], "event": "rolled_back", "version": "1.2.0"},
        )
        time.sleep(0.8)  # the inventory is written every 0.2 s

        def listed(**params: str) -> list[dict]:  # type: ignore[type-arg]
            r = admin.get("/v1/admin/devices", params=params)
            assert r.status_code == 200, r.text
            return r.json()["devices"]

        one = {d["hardware_id"]: d for d in listed(limit="100")}
        assert len(one) == 30
        d = one[hws[11]]
        assert (d["app"], d["version"], d["counter"], d["channel"]) == (
            "hello",
            "1.1.0",
            2,
            "stable",
        )
        assert datetime.fromisoformat(d["last_check_at"]) > datetime.now(UTC) - timedelta(minutes=1)
        assert one[hws[12]]["last_event"] == "rolled_back"
        assert one[hws[20]]["last_check_at"] is None
        assert {d["hardware_id"] for d in listed(version="1.0.0")} == set(hws[:10])
        assert [d["hardware_id"] for d in listed(event="rolled_back")] == [hws[12]]
        soon = (datetime.now(UTC) + timedelta(days=30)).isoformat()
        assert [d["hardware_id"] for d in listed(expiring_before=soon)] == [hws[3]]
        now = datetime.now(UTC).isoformat()
        assert {d["hardware_id"] for d in listed(seen_before=now)} == set(hws)
        assert {
            d["hardware_id"]
            for d in listed(seen_before=(datetime.now(UTC) - timedelta(hours=1)).isoformat())
        } == set(hws[15:])
        assert admin.get("/v1/admin/devices", params={"state": "lost"}).status_code == 400
        assert admin.get("/v1/admin/devices", params={"colour": "x"}).status_code == 400

        # Keyset pages: 7 at a time, the cursor is the last id; every device exactly once.
        seen: list[str] = []
        after = 0
        while True:
            body = admin.get("/v1/admin/devices", params={"limit": "7", "after": str(after)}).json()
            seen += [d["hardware_id"] for d in body["devices"]]
            if body["next"] is None:
                break
            after = body["next"]
        assert seen == hws
        lines = admin.get("/v1/admin/devices.jsonl", params={"version": "1.1.0"}).text
        assert [json.loads(x)["hardware_id"] for x in lines.splitlines()] == hws[10:15]

        # The CLI: filters, JSON lines, and moving a device to a group it is then offered.
        assert [
            d["hardware_id"]
            for d in cli(srv.url, "inventory", "list", "--version", "1.0.0", "--limit", "4")
        ] == hws[:4]
        assert [
            d["hardware_id"] for d in cli(srv.url, "inventory", "list", "--expiring-within", "10")
        ] == [hws[3]]
        rid = admin.post(
            "/v1/admin/releases", content=make_artifact(keys.release, "1.5.0", 2)
        ).json()["release"]["id"]
        admin.post(f"/v1/admin/releases/{rid}/promote", json={"group": "beta"})
        assert check(dev, fleet, hws[25], "1.0.0")["update"] is False
        res = run_mpseal(
            "device",
            "group",
            hws[25],
            "beta",
            "--server",
            srv.url,
            env={"MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        assert res.returncode == 0 and "default -> beta" in res.stdout, res.stderr
        assert check(dev, fleet, hws[25], "1.0.0")["update"] is True
        assert [d["hardware_id"] for d in listed(group="beta")] == [hws[25]]
        res = run_mpseal(
            "device",
            "group",
            "no-such",
            "beta",
            "--server",
            srv.url,
            env={"MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1


def test_inventory_is_written_as_a_chunk_of_it_fills(
    db_url: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy server writes the inventory a chunk at a time as the check-ins come, not
    all of the last ``inventory_seconds`` in one burst: here a chunk is 4 devices and the
    period a minute, and a chunk's check-ins are in the database within a second."""
    import mpseal.server.service as service

    monkeypatch.setattr(service, "INVENTORY_CHUNK", 4)
    fleet = register(db_url, 6)
    hws = sorted(fleet.tokens)
    cfg = config_for(db_url, keys, tmp_path, cache_seconds=0.0, inventory_seconds=60.0)
    reg = Registry.open(db_url)

    def written() -> set[str]:
        with reg.engine.connect() as conn:
            return set(
                conn.scalars(
                    sa.select(Device.hardware_id)
                    .join(DeviceStatus, DeviceStatus.device_id == Device.id)
                    .where(DeviceStatus.last_check_at.is_not(None))
                )
            )

    with running_server(cfg) as srv, httpx.Client(base_url=srv.url) as dev:
        for hw in hws[:3]:
            check(dev, fleet, hw, "1.0.0")
        time.sleep(1.0)
        assert written() == set()  # less than a chunk: it waits for the period
        check(dev, fleet, hws[3], "1.0.0")
        deadline = time.monotonic() + 5
        while written() != set(hws[:4]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert written() == set(hws[:4])
    reg.engine.dispose()


# -- the indexed day of the last check-in (migration 0010) ------------------------------

MIDNIGHT = datetime(2026, 3, 1, tzinfo=UTC)


def _ids(reg: Registry, hws: list[str]) -> list[int]:
    with reg.engine.connect() as conn:
        found = dict(conn.execute(sa.select(Device.hardware_id, Device.id)).all())
    return [int(found[hw]) for hw in hws]


def _seen(reg: Registry, **flt: datetime) -> set[int]:
    return {int(d["id"]) for d in reg.iter_inventory(InventoryFilter(**flt))}


def test_last_seen_filters_are_exact_across_a_day_boundary(db_url: str) -> None:
    """The filters narrow by the indexed UTC day, then by the exact time: a check-in a
    second before midnight and one at midnight fall on either side, as they should."""
    fleet = register(db_url, 4)
    reg = Registry.open(db_url)
    store = ReleaseStore(reg)
    try:
        late, midnight, early, never = _ids(reg, sorted(fleet.tokens))
        one = timedelta(seconds=1)
        store.record_checkins(
            [
                Checkin(late, "hello", "1.0.0", 1, "stable", MIDNIGHT - one),
                Checkin(midnight, "hello", "1.0.0", 1, "stable", MIDNIGHT),
                Checkin(early, "hello", "1.0.0", 1, "stable", MIDNIGHT + one),
            ]
        )
        with reg.engine.connect() as conn:
            rows = conn.execute(
                sa.select(DeviceStatus.device_id, DeviceStatus.last_check_day)
            ).all()
        assert dict(rows) == {
            late: epoch_day(MIDNIGHT) - 1,
            midnight: epoch_day(MIDNIGHT),
            early: epoch_day(MIDNIGHT),
        }
        assert _seen(reg, seen_after=MIDNIGHT - one) == {late, midnight, early}
        assert _seen(reg, seen_after=MIDNIGHT) == {midnight, early}
        assert _seen(reg, seen_after=MIDNIGHT + one) == {early}
        assert _seen(reg, seen_before=MIDNIGHT - one) == {never}
        assert _seen(reg, seen_before=MIDNIGHT) == {late, never}
        assert _seen(reg, seen_before=MIDNIGHT + one) == {late, midnight, never}
        assert _seen(reg, seen_after=MIDNIGHT - one, seen_before=MIDNIGHT + one) == {
            late,
            midnight,
        }
    finally:
        store.close()
        reg.engine.dispose()


def test_inventory_rows_from_before_migration_0010_get_their_day(db_url: str) -> None:
    """A database whose inventory was written before the day column: the upgrade fills it
    in from the exact time, and the "last seen" filters find those devices."""
    fleet = register(db_url, 2)
    reg = Registry.open(db_url)
    seen, never = _ids(reg, sorted(fleet.tokens))
    with reg.engine.begin() as conn:
        schema_at(conn, "0009", down=True)
        conn.execute(
            sa.text(
                "INSERT INTO device_status (device_id, app, version, last_check_at) "
                "VALUES (:d, 'hello', '1.0.0', :t)"
            ),
            {"d": seen, "t": MIDNIGHT - timedelta(minutes=1)},
        )
    reg.engine.dispose()
    reg = Registry.open(db_url)  # upgrades to the newest schema
    try:
        with reg.engine.connect() as conn:
            day = conn.scalar(sa.select(DeviceStatus.last_check_day))
        assert day == epoch_day(MIDNIGHT) - 1
        assert _seen(reg, seen_after=MIDNIGHT - timedelta(hours=1)) == {seen}
        assert _seen(reg, seen_before=MIDNIGHT - timedelta(hours=1)) == {never}
    finally:
        reg.engine.dispose()


def test_checkins_of_the_same_day_update_inventory_rows_in_place_on_postgresql(
    pg_url: str,
) -> None:
    """A device's hourly check-ins change no indexed value of its inventory row (the same
    version, the same day), and each page keeps room for the new row version: PostgreSQL
    updates them heap-only (HOT), writing no index entries. A new version is not HOT (it
    is indexed); the last report (not indexed) is."""
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    fleet = register(pg_url, 2000)
    reg = Registry.open(pg_url)
    ids = _ids(reg, sorted(fleet.tokens))
    every_tenth = ids[::10]  # a few rows a page, as a flush's devices spread over a big table

    def write(record: Callable[[ReleaseStore], None]) -> None:
        store = ReleaseStore(reg)
        try:
            record(store)
        finally:
            store.close()
        reg.engine.dispose()  # a backend flushes its table statistics when it ends

    def checkins(ids: list[int], version: str, at: datetime) -> None:
        write(
            lambda s: s.record_checkins(
                [Checkin(d, "hello", version, 1, "stable", at) for d in ids]
            )
        )

    def updates(want: int) -> tuple[int, int]:
        for _ in range(50):
            with reg.engine.connect() as conn:
                n, hot = conn.execute(
                    sa.text(
                        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                        "WHERE relname = 'device_status'"
                    )
                ).one()
            reg.engine.dispose()
            if n >= want:
                return int(n), int(hot)
            time.sleep(0.1)
        raise AssertionError(f"the statistics never counted {want} updates")

    n = len(every_tenth)
    try:
        checkins(ids, "1.0.0", MIDNIGHT + timedelta(hours=1))  # inserted
        checkins(every_tenth, "1.0.0", MIDNIGHT + timedelta(hours=2))
        assert updates(n) == (n, n)
        checkins(every_tenth, "1.1.0", MIDNIGHT + timedelta(hours=3))
        assert updates(2 * n) == (2 * n, n)
        write(
            lambda s: s.record_reports(
                [Report(d, "rolled_back", "1.1.0", "benchmark") for d in every_tenth]
            )
        )
        assert updates(3 * n) == (3 * n, 2 * n)
    finally:
        reg.engine.dispose()
