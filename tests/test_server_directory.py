"""The device directory (server/directory.py): every active device's credentials in each
server process's memory, kept current from the database's feed of changed devices
(migrations 0011, 0012). What a device relies on: a revocation, a group change or a failed
release made anywhere (another server, the CLI, a script on the database) reaches every
server within ``cache_seconds``; a failure report moves the release where the device is
held (the device is not looked up again for it); a device registered later is looked up;
a fleet larger than the limit, or SQLite, is looked up as before. Against a real
PostgreSQL and real ``mpseal serve`` processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from postgres import PostgresServer
from server_support import (
    ADMIN_TOKEN,
    Keys,
    config_for,
    make_artifact,
    make_keys,
    register,
    running_server,
)
from test_server_api import check_body
from test_server_reports import published
from test_server_survival import serve, wait_for

from mpseal.errors import TransportError
from mpseal.fleet.registry import Registry, token_hash
from mpseal.fleet.releases import FAILED_EVENTS
from mpseal.fleet.releasestore import ReleaseStore, Report
from mpseal.server.directory import DeviceDirectory
from mpseal.server.service import UpdateServer

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CACHE_SECONDS = 0.5  # what test_server_survival.serve gives --cache-seconds
ROW = (7, "dev-00007", "default", (), "esp32")
A, B, F = "aa" * 32, "bb" * 32, "ff" * 32  # credentials: SHA-256 digests in hex


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def fresh_pg(pg_url: str) -> str:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return pg_url


def directory_of(url: str) -> dict[str, object]:
    status: dict[str, object] = httpx.get(f"{url}/healthz").json()["directory"]
    return status


def wait_directory(url: str, credentials: int) -> None:
    """Every worker answered with its directory loaded (several answers in a row)."""
    assert wait_for(
        lambda: all(
            directory_of(url) == {"state": "ready", "credentials": credentials} for _ in range(6)
        )
    ), directory_of(url)


def seconds_until(pred: Callable[[], bool], limit: float = 10.0) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < limit, "not within the limit"
        time.sleep(0.02)
    return time.monotonic() - t0


def check(url: str, headers: dict[str, str], hw: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/device/check", json=check_body(hw), headers=headers)


# -- the feed (store level) ----------------------------------------------------------


def test_device_feed_names_a_change_committed_after_a_read_that_could_not_see_it(
    fresh_pg: str,
) -> None:
    """The race a feed by sequence number gets wrong: a change whose transaction was
    running during a read, and committed after it, is named by the next read."""
    register(fresh_pg, 2)
    store = ReleaseStore(Registry.open(fresh_pg))
    xmin, _ = store.device_changes(None)
    engine = sa.create_engine(fresh_pg)
    with engine.connect() as conn:
        trans = conn.begin()
        conn.execute(
            sa.text("UPDATE devices SET state = 'revoked' WHERE hardware_id = 'dev-00001'")
        )
        xmin2, seen = store.device_changes(xmin)  # during the transaction: not visible
        assert seen == []
        trans.commit()
    engine.dispose()
    _, seen = store.device_changes(xmin2)
    assert seen == [(device_id(fresh_pg, "dev-00001"), None, False)]
    xmin3, _ = store.device_changes(xmin2)
    assert store.device_changes(xmin3)[1] == []  # read once the transaction is past


def device_id(url: str, hw: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(
            sa.text("SELECT id FROM devices WHERE hardware_id = :hw"), {"hw": hw}
        ).scalar_one()
    engine.dispose()
    return int(value)


def test_device_feed_names_every_kind_of_change_a_lookup_depends_on(fresh_pg: str) -> None:
    fleet = register(fresh_pg, 4)
    registry = Registry.open(fresh_pg)
    store = ReleaseStore(registry)
    ids = {hw: device_id(fresh_pg, hw) for hw in fleet.tokens}

    def changes(action: Callable[[], object]) -> list[int]:
        xmin, _ = store.device_changes(None)
        action()
        found = store.device_changes(xmin)[1]
        assert all(release is None and not failed for _, release, failed in found), found
        return [device for device, _, _ in found]

    assert changes(lambda: registry.set_group("dev-00000", "beta")) == [ids["dev-00000"]]
    cert = fleet.fingerprints["dev-00001"]
    assert changes(lambda: registry.revoke_certificate(cert)) == [ids["dev-00001"]]
    # a report about no release changes nothing a lookup reads (a failed release does:
    # test_failure_report_moves_the_release_where_each_directory_holds_the_device)
    report = Report(ids["dev-00002"], "refused", "1.1.0", "", None, "hello", "stable")
    assert changes(lambda: store.record_reports([report])) == []
    assert changes(lambda: registry.revoke_device("dev-00003")) == [ids["dev-00003"]]
    assert changes(lambda: registry.set_group("dev-00003", "x")) == []  # revoked: not held


def test_a_batch_of_failure_reports_feeds_its_devices_comparing_each_row_once(
    fresh_pg: str,
) -> None:
    """The feed's trigger on an UPDATE of ``device_updates`` pairs each row with its old
    version through a hash, not by comparing every pair (migration 0015: planned for the
    one row PostgreSQL assumes a transition table holds, the nested loop compared n^2 pairs,
    12 of a 500-report batch's 15 ms, in the plan a connection's first batch made for
    all of its later ones). Seen in the trigger's own plan, logged by ``auto_explain`` as
    it ran; the feed names every device the batch failed."""
    import psycopg

    n = 300
    registry, store, rid, ids = published(fresh_pg, n)
    store.record_reports([Report(d, "booted", "1.1.0", "", rid) for d in ids])
    xmin, _ = store.device_changes(None)
    plans: list[str] = []
    with psycopg.connect(fresh_pg.replace("+psycopg", ""), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
        for sql in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_analyze = on",
            "SET auto_explain.log_nested_statements = on",
            "SET client_min_messages = log",
        ):
            conn.execute(sql)
        update = "UPDATE device_updates SET prev_state = state, state = %s WHERE release_id = %s"
        # the session's first batch plans the trigger's statement for the rest of it:
        # a server's connection meets a batch of one report as often as one of hundreds
        conn.execute(update + " AND device_id = %s", ("booted", rid, ids[0]))
        conn.execute(update, ("rolled_back", rid))
    plan = [p for p in plans if "INSERT INTO device_changes" in p and "old_rows" in p][-1]
    compared = sum(
        int(line.split(":")[1]) for line in plan.splitlines() if "Rows Removed by Join" in line
    )
    assert "Nested Loop" not in plan and compared <= n, plan
    assert sorted(store.device_changes(xmin)[1]) == [(d, rid, True) for d in ids]
    store.close()
    registry.engine.dispose()


@pytest.mark.parametrize("name", ["0011_device_changes", "0012_failed_in_feed"])
def test_migration_names_the_failed_states_of_fleet_releases(name: str) -> None:
    """One source of truth: the triggers' failed states are FAILED_EVENTS."""
    from importlib import import_module

    migration = import_module(f"mpseal.fleet.migrations.versions.{name}")
    assert migration._FAILED == "(" + ", ".join(f"'{e}'" for e in FAILED_EVENTS) + ")"


def test_failure_report_moves_the_release_where_each_directory_holds_the_device(
    fresh_pg: str, keys: Keys, tmp_path: Path
) -> None:
    """Two server processes on one database, their directories loaded. A device's failure
    report through one: that one stops offering the release at once, the other once it
    read the feed, and both still hold the device (no lookup for it); its later
    ``confirmed`` report of the release takes it out of the failed ones in both. A
    revoked device is dropped, as before."""
    from mpseal.server.app import create_app

    fleet = register(fresh_pg, 2)
    key = ("token", token_hash(fleet.tokens["dev-00000"]))
    h = fleet.headers("dev-00000")
    dev = device_id(fresh_pg, "dev-00000")

    async def run() -> None:
        apps = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            apps.append(create_app(config_for(fresh_pg, keys, tmp_path / name, cache_seconds=60)))
        a, b = (app.state.server for app in apps)
        for server in (a, b):
            await server.start()
        try:
            while not (a.directory.serving and b.directory.serving):
                await asyncio.sleep(0.05)
            clients = [
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
                for app in apps
            ]
            ca, cb = clients
            rid = (
                await ca.post(
                    "/v1/admin/releases",
                    content=make_artifact(keys.release, "1.1.0", 2),
                    headers=ADMIN,
                )
            ).json()["release"]["id"]
            promoted = await ca.post(
                f"/v1/admin/releases/{rid}/promote", json={"percent": 100}, headers=ADMIN
            )
            assert promoted.status_code == 200
            await b._read_changes()
            b.releases.invalidate()

            async def offered(client: httpx.AsyncClient) -> bool:
                r = await client.post("/v1/device/check", json=check_body("dev-00000"), headers=h)
                assert r.status_code == 200, r.text
                return bool(r.json()["update"])

            async def report(event: str) -> None:
                body = {"hardware_id": "dev-00000", "event": event, "version": "1.1.0",
                        "app": "hello", "board": "esp32", "reason": "test"}  # fmt: skip
                r = await ca.post("/v1/device/report", json=body, headers=h)
                assert r.status_code == 200, r.text

            assert await offered(ca) and await offered(cb)
            xmin, _ = a.store.device_changes(None)
            await report("rolled_back")
            assert a.store.device_changes(xmin)[1] == [(dev, rid, True)]  # the feed's row
            row = a.directory.get(key)
            assert row is not None and rid in row[3]  # held, moved in place
            assert not await offered(ca)
            assert await offered(cb)  # not yet read from the feed (cache_seconds 60)
            lookups = b.store.credential_rows
            b.store.credential_rows = None  # type: ignore[assignment]  # none may be needed
            await b._read_changes()
            row = b.directory.get(key)
            assert row is not None and rid in row[3]
            assert not await offered(cb)
            await report("confirmed")
            await b._read_changes()
            for server in (a, b):
                row = server.directory.get(key)
                assert row is not None and rid not in row[3]
            assert await offered(ca) and await offered(cb)
            b.store.credential_rows = lookups  # type: ignore[method-assign]
            Registry.open(fresh_pg).revoke_device("dev-00000")
            await b._read_changes()
            assert b.directory.get(key) is None
            assert b.directory.status() == {"state": "ready", "credentials": 2}
            for client in clients:
                await client.aclose()
        finally:
            for server in (a, b):
                await server.stop()

    asyncio.run(run())


# -- the directory (unit) --------------------------------------------------------------


def test_directory_serves_nothing_until_loaded_and_nothing_over_its_limit() -> None:
    d = DeviceDirectory(3)
    d.begin_load(10)
    assert d.load_page({("token", A): (ROW, None)})
    assert d.get(("token", A)) is None  # a page may predate a change not yet read
    d.loaded()
    assert d.get(("token", A)) == ROW
    big = {("token", f"{i:064x}"): (ROW, None) for i in range(3)}
    assert not d.load_page(big)
    assert d.state == "too large" and len(d) == 0 and d.get(("token", A)) is None


def test_directory_turns_away_a_lookup_that_began_before_a_change_it_read() -> None:
    d = DeviceDirectory(10)
    d.begin_load(1)
    d.loaded()
    began = d.generation
    d.apply(2, [(ROW[0], None, False)])
    d.offer({("token", A): (ROW, None)}, began)  # read before the change: not held
    assert d.get(("token", A)) is None
    d.offer({("token", A): (ROW, None), ("cert", F): (ROW, 2e9)}, d.generation)
    assert d.get(("token", A)) == ROW and d.get(("cert", F)) == ROW
    d.drop([ROW[0]])  # a device's every credential goes
    assert d.get(("token", A)) is None and d.get(("cert", F)) is None and len(d) == 0


def test_directory_moves_a_failed_release_in_every_credential_of_the_device() -> None:
    other = (8, "dev-00008", "default", (), "esp32")
    d = DeviceDirectory(10)
    d.begin_load(1)
    d.load_page({("token", A): (ROW, None), ("cert", F): (ROW, 2e9), ("token", B): (other, None)})
    d.loaded()
    began = d.generation
    d.apply(2, [(ROW[0], 5, True), (ROW[0], 3, True), (other[0], 5, False)])
    assert d.generation > began  # a lookup begun before the read is turned away
    assert d.get(("token", A)) == d.get(("cert", F)) == (*ROW[:3], (3, 5), ROW[4])
    assert d.get(("token", B)) == other and len(d) == 3
    d.set_failed(ROW[0], 5, False)
    assert d.get(("token", A)) == d.get(("cert", F)) == (*ROW[:3], (3,), ROW[4])
    d.apply(3, [(ROW[0], 9, True), (ROW[0], None, False)])  # the device changed: dropped
    assert d.get(("token", A)) is None and d.get(("cert", F)) is None and len(d) == 1
    d.set_failed(ROW[0], 9, True)  # not held: nothing to move
    assert len(d) == 1


def test_directory_holds_no_credential_that_is_not_a_digest() -> None:
    d = DeviceDirectory(10)
    d.begin_load(1)
    d.load_page({("token", "not hex"): (ROW, None), ("token", A): (ROW, None)})
    d.loaded()
    assert len(d) == 1 and d.get(("token", "not hex")) is None and d.get(("token", A)) == ROW


def test_directory_certificate_expires_by_the_clock() -> None:
    now = [1000.0]
    d = DeviceDirectory(10, clock=lambda: now[0])
    d.begin_load(1)
    d.load_page({("cert", F): (ROW, 1500.0), ("token", B): (ROW, None)})
    d.loaded()
    assert d.get(("cert", F)) == ROW
    now[0] = 1500.5
    assert d.get(("cert", F)) is None and d.get(("token", B)) == ROW


# -- real servers ------------------------------------------------------------------------


def test_revocation_through_one_server_or_the_database_reaches_another_servers_directory(
    fresh_pg: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(fresh_pg, 5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        serve(fresh_pg, keys, tmp_path / "a") as (a, _),
        serve(fresh_pg, keys, tmp_path / "b", "--workers", "2") as (b, _),
    ):
        wait_directory(b, 10)  # 5 tokens, 5 certificates
        for hw in ("dev-00001", "dev-00002", "dev-00003"):
            assert check(b, fleet.headers(hw), hw).status_code == 200
        # through the other server's admin API
        r = httpx.post(f"{a}/v1/admin/devices/dev-00001/revoke", json={}, headers=ADMIN)
        assert r.status_code == 200
        assert check(a, fleet.headers("dev-00001"), "dev-00001").status_code == 403  # at once
        late = seconds_until(
            lambda: all(
                check(b, fleet.headers("dev-00001"), "dev-00001").status_code == 403
                for _ in range(4)
            )
        )
        assert late < CACHE_SECONDS + 1.0
        # straight in the database (the CLI, a script): the same
        Registry.open(fresh_pg).revoke_device("dev-00002", "stolen")
        late = seconds_until(
            lambda: all(
                check(b, fleet.headers("dev-00002"), "dev-00002").status_code == 403
                for _ in range(4)
            )
        )
        assert late < CACHE_SECONDS + 1.0
        assert check(b, fleet.headers("dev-00003"), "dev-00003").status_code == 200
        # a device registered after the load is looked up
        later = register(fresh_pg, 1, prefix="new")
        assert check(b, later.headers("new-00000"), "new-00000").status_code == 200


def test_release_failed_through_one_server_is_not_offered_again_by_another(
    fresh_pg: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(fresh_pg, 3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        serve(fresh_pg, keys, tmp_path / "a") as (a, _),
        serve(fresh_pg, keys, tmp_path / "b") as (
            b,
            _,
        ),
    ):
        wait_directory(b, 6)
        rid = httpx.post(
            f"{a}/v1/admin/releases", content=make_artifact(keys.release, "1.1.0", 2), headers=ADMIN
        ).json()["release"]["id"]
        assert (
            httpx.post(
                f"{a}/v1/admin/releases/{rid}/promote", json={"percent": 100}, headers=ADMIN
            ).status_code
            == 200
        )
        h = fleet.headers("dev-00000")
        assert wait_for(lambda: check(b, h, "dev-00000").json()["update"] is True)
        report = {
            "hardware_id": "dev-00000",
            "event": "refused",
            "version": "1.1.0",
            "app": "hello",
            "board": "esp32",
            "reason": "test",
        }
        assert httpx.post(f"{a}/v1/device/report", json=report, headers=h).status_code == 200
        late = seconds_until(lambda: check(b, h, "dev-00000").json()["update"] is False)
        assert late < CACHE_SECONDS + 1.0
        assert check(b, fleet.headers("dev-00001"), "dev-00001").json()["update"] is True


def test_directory_serves_the_devices_it_holds_while_the_database_is_down(
    keys: Keys, tmp_path: Path
) -> None:
    with PostgresServer() as pg:
        fleet = register(pg.url, 3)
        with serve(pg.url, keys, tmp_path) as (url, _):
            wait_directory(url, 6)
            assert check(url, fleet.headers("dev-00000"), "dev-00000").status_code == 200
            pg.stop()
            # never looked up by this server: only the directory knows it
            r = check(url, fleet.headers("dev-00002"), "dev-00002")
            assert r.status_code == 200, r.text
            assert wait_for(lambda: httpx.get(f"{url}/healthz").json()["database"] == "down")
            assert directory_of(url) == {"state": "ready", "credentials": 6}


def test_fleet_over_the_directory_limit_is_looked_up(
    fresh_pg: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(fresh_pg, 5)
    with serve(fresh_pg, keys, tmp_path, "--directory-max", "4") as (url, _):
        assert wait_for(lambda: directory_of(url)["state"] == "too large")
        assert directory_of(url) == {"state": "too large", "credentials": 0}
        assert check(url, fleet.headers("dev-00004"), "dev-00004").status_code == 200
        logs = "".join(p.read_text() for p in tmp_path.glob("serve-*.log"))
        assert "device directory off" in logs


def test_a_change_through_this_server_whose_feed_read_fails_drops_the_directory(
    fresh_pg: str, keys: Keys, tmp_path: Path
) -> None:
    """A revocation through this process is stored before the directory hears of it; if
    the feed cannot be read then, the admin's call still succeeds and nothing held is
    served until the directory is loaded again."""
    fleet = register(fresh_pg, 2)

    async def run() -> None:
        server = UpdateServer(config_for(fresh_pg, keys, tmp_path, cache_seconds=0.2))
        await server.start()
        try:
            while not server.directory.serving:
                await asyncio.sleep(0.05)
            assert await server.device("token", token_hash(fleet.tokens["dev-00000"]))
            real = server.store.device_changes

            def broken(since: int | None) -> tuple[int, list[int]]:
                raise TransportError("the database went away")

            server.store.device_changes = broken  # type: ignore[method-assign]
            await server.devices_changed()  # no exception: the revocation was stored
            assert server.directory.state == "loading" and len(server.directory) == 0
            server.store.device_changes = real  # type: ignore[method-assign]
            for _ in range(200):
                if server.directory.serving:
                    break
                await asyncio.sleep(0.05)
            assert server.directory.status() == {"state": "ready", "credentials": 4}
        finally:
            await server.stop()

    asyncio.run(run())


def test_sqlite_server_has_no_directory(keys: Keys, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mpseal.db'}"
    fleet = register(url, 2)
    with running_server(config_for(url, keys, tmp_path)) as srv:
        assert directory_of(srv.url) == {"state": "off", "credentials": 0}
        assert check(srv.url, fleet.headers("dev-00001"), "dev-00001").status_code == 200
