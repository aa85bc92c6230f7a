"""Checks answered in the protocol (run.py ``TlsHttpToolsProtocol``, device_api.check_now):
a check whose device, timestamp and releases the server process holds is answered without
an ASGI request. What a device relies on: the same bytes as the app's answer (a server
with a concurrency limit answers every check through the app), the same errors, every way a
request can arrive (in pieces, pipelined, closing), over mutual TLS too; on SQLite and a
real PostgreSQL."""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import (
    Keys,
    Running,
    config_for,
    make_artifact,
    make_keys,
    register,
    running_server,
)
from test_server_directory import fresh_pg, wait_directory  # noqa: F401 - the fixture
from test_server_tls import pki  # noqa: F401 - the fixture

from mpseal.server.config import ServerConfig, ServerLimits
from mpseal.server.run import RunOptions

CACHE_SECONDS = 60.0  # everything a check needs stays held for the whole test


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


def check(hw: str, version: str = "1.0.0", **kw: object) -> bytes:
    body = {
        "hardware_id": hw,
        "board": "esp32",
        "app": "hello",
        "version": version,
        "counter": 1,
        "timestamp_version": 0,
        **kw,
    }
    return json.dumps(body).encode()


def report(hw: str, event: str = "rolled_back", version: str = "1.1.0", **kw: object) -> bytes:
    body = {"hardware_id": hw, "event": event, "version": version, "app": "hello", **kw}
    return json.dumps({**body, "board": "esp32", "reason": "test"}).encode()


def post(
    body: bytes, token: str | None, *extra: str, version: str = "1.1", path: str = "check"
) -> bytes:
    head = [f"POST /v1/device/{path} HTTP/{version}", "Host: 127.0.0.1"]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    head += [f"Content-Length: {len(body)}", "Content-Type: application/json", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Conn:
    """One kept-alive connection, read answer by answer (its raw bytes)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def answer(self) -> tuple[int, dict[str, str], bytes, bytes]:
        """(status, headers, body, the raw head)."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body, head

    def ask(self, request: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
        self.sock.sendall(request)
        return self.answer()

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "the server closed the connection"
        self.buf += chunk

    def closed(self) -> bool:
        self.sock.settimeout(5)
        return self.sock.recv(1) == b""


def connect(url: str) -> Conn:
    host, port = url.split("//")[1].split(":")
    return Conn(socket.create_connection((host, int(port)), timeout=10))


def at_once(url: str, what: str = "checks", **kw: object) -> int:
    count: int = httpx.get(f"{url}/healthz", **kw).json()[f"{what}_at_once"]  # type: ignore[arg-type]
    return count


def reported(hw: str, token: str | None, *extra: str, **kw: object) -> bytes:
    return post(report(hw, **kw), token, *extra, path="report")


def without_date(head: bytes) -> bytes:
    return b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"date:"))


@contextmanager
def both_servers(cfg: ServerConfig) -> Iterator[tuple[Running, Running]]:
    """A server, and one that answers every request through the ASGI app (a concurrency
    limit: the app enforces it), on the same database."""
    with running_server(cfg) as srv, running_server(cfg, limit_concurrency=1000) as app_srv:
        yield srv, app_srv


def promoted(srv: Running, keys: Keys) -> int:
    """A release 1.1.0 published and offered to every device; its id."""
    with srv.admin() as admin:
        rid: int = admin.post(
            "/v1/admin/releases", content=make_artifact(keys.release, "1.1.0", 2)
        ).json()["release"]["id"]
        assert admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100}).is_success
    return rid


def test_a_check_answered_at_once_is_the_apps_answer_byte_for_byte(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(db_url, 3)
    cfg = config_for(db_url, keys, tmp_path, cache_seconds=CACHE_SECONDS)
    with both_servers(cfg) as (srv, app_srv):
        promoted(srv, keys)
        fast, slow = connect(srv.url), connect(app_srv.url)
        for hw, version in (("dev-00000", "1.0.0"), ("dev-00001", "1.1.0"), ("dev-00000", "1.0.0")):
            request = post(check(hw, version), fleet.tokens[hw])
            ours, apps = fast.ask(request), slow.ask(request)
            assert ours[0] == 200 and ours[2] == apps[2], (ours, apps)
            assert without_date(ours[3]) == without_date(apps[3])
            assert "date" in ours[1]
        offered, current = json.loads(ours[2]), json.loads(slow.ask(request)[2])
        assert offered["update"] is True and offered["target"] == current["target"]
        # the first check of each device filled the server's caches through the app; the
        # second device's (its device looked up) and the third were answered at once
        assert at_once(srv.url) >= 1
        assert at_once(app_srv.url) == 0
        before = at_once(srv.url)
        for _ in range(3):
            assert fast.ask(post(check("dev-00002"), fleet.tokens["dev-00002"]))[0] == 200
        # its first check looked the device up (SQLite), or found it in the directory
        assert at_once(srv.url) == before + (3 if db_url.startswith("postgresql") else 2)


def test_a_checks_errors_are_the_apps_errors(db_url: str, keys: Keys, tmp_path: Path) -> None:
    fleet = register(db_url, 2)
    token = fleet.tokens["dev-00000"]
    cfg = config_for(db_url, keys, tmp_path, cache_seconds=CACHE_SECONDS)
    with both_servers(cfg) as (srv, app_srv):
        fast, slow = connect(srv.url), connect(app_srv.url)
        warm = post(check("dev-00000"), token)
        assert fast.ask(warm)[0] == 200 and fast.ask(warm)[0] == 200
        held = at_once(srv.url)
        assert held >= 1  # the device, its channel and releases are held
        wrong = [
            (403, post(check("dev-00001"), token)),  # another device's hardware id
            (403, post(check("dev-00000"), "tok-not-a-device")),
            (401, post(check("dev-00000"), None)),
            (400, post(b'{"hardware_id": "dev-00000", ', token)),
            (400, post(b"[1, 2]", token)),
            (400, post(check("dev-00000", version="1.0.0 beta"), token)),
            (400, post(check("dev-00000", counter=-1), token)),
            (400, post(check("dev-00000", app=None), token)),
            (404, post(check("dev-00000", channel="nightly"), token)),
            (413, post(check("dev-00000", reason="x" * 5000), token)),
        ]
        for status, request in wrong:
            ours, apps = fast.ask(request), slow.ask(request)
            assert (ours[0], ours[2]) == (apps[0], apps[2]) and ours[0] == status, (ours, apps)
            assert list(json.loads(ours[2])) == ["error"]
        assert at_once(srv.url) == held  # none of them was answered in the protocol
        assert fast.ask(warm)[0] == 200  # and the connection still serves
        assert at_once(srv.url) == held + 1


def test_checks_in_pieces_pipelined_or_closing_are_answered_at_once(
    keys: Keys, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    fleet = register(db, 1)
    token = fleet.tokens["dev-00000"]
    request = post(check("dev-00000"), token)
    with running_server(config_for(db, keys, tmp_path, cache_seconds=CACHE_SECONDS)) as srv:
        conn = connect(srv.url)
        assert conn.ask(request)[0] == 200
        n = at_once(srv.url)
        head, body = request.split(b"\r\n\r\n")
        for piece in (head + b"\r\n", b"\r\n" + body[:20], body[20:]):  # the head, then the body
            conn.sock.sendall(piece)
            time.sleep(0.05)
        assert conn.answer()[0] == 200
        conn.sock.sendall(request * 3)  # pipelined: three answers, in order
        assert [conn.answer()[0] for _ in range(3)] == [200, 200, 200]
        assert conn.ask(post(b"", token))[0] == 400  # between them, one the app answers
        assert conn.ask(request)[0] == 200
        assert at_once(srv.url) == n + 5
        status, headers, _, _ = conn.ask(post(check("dev-00000"), token, "Connection: close"))
        assert status == 200 and headers["connection"] == "close" and conn.closed()
        old = connect(srv.url)  # HTTP/1.0: no keep-alive
        status, headers, _, _ = old.ask(post(check("dev-00000"), token, version="1.0"))
        assert status == 200 and headers["connection"] == "close" and old.closed()
        assert at_once(srv.url) == n + 7


def test_a_check_over_mutual_tls_is_answered_at_once(
    keys: Keys,
    tmp_path: Path,
    pki: dict[str, Any],  # noqa: F811 - the fixture imported above
) -> None:
    folder: Path = pki["folder"]
    dev_cert, dev_key, fp = pki["dev0"]
    other_cert, other_key, _ = pki["stranger"]  # the fleet CA's, but not registered
    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    register(db, 1, fingerprints={"dev-00000": fp})
    options = RunOptions(
        tls_cert=pki["server"][0], tls_key=pki["server"][1], client_ca=folder / "fleet-ca.pem"
    )
    cfg = config_for(db, keys, tmp_path, cache_seconds=CACHE_SECONDS)
    with running_server(cfg, options) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        ca = ssl.create_default_context(cafile=str(folder / "server-ca.pem"))

        def device(cert: Path, key: Path) -> Conn:
            ctx = ssl.create_default_context(cafile=str(folder / "server-ca.pem"))
            ctx.load_cert_chain(str(cert), str(key))
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            return Conn(ctx.wrap_socket(raw, server_hostname="127.0.0.1"))

        conn = device(dev_cert, dev_key)
        for _ in range(3):  # no token: the client certificate says who it is
            assert conn.ask(post(check("dev-00000"), None))[0] == 200
        assert at_once(srv.url, verify=ca) == 2
        stranger = device(other_cert, other_key)
        for _ in range(2):
            status, _, body, _ = stranger.ask(post(check("dev-00001"), None))
            assert status == 403 and "certificate" in json.loads(body)["error"]
        assert at_once(srv.url, verify=ca) == 2


def test_checks_stay_answered_at_once_while_their_caches_expire_and_reload(
    fresh_pg: str,  # noqa: F811 - the fixture imported above
    keys: Keys,
    tmp_path: Path,
) -> None:
    """The channel's releases and timestamp, read by every check, are reloaded before they
    expire: a device checking every 10 ms for three of their lifetimes (1 s; a reload has
    half of one) is answered in the protocol every time, none sent to the app to wait for
    the database."""
    fleet = register(fresh_pg, 1)
    cfg = config_for(fresh_pg, keys, tmp_path, cache_seconds=1.0)
    with running_server(cfg) as srv:
        wait_directory(srv.url, 2)  # its token and its certificate
        promoted(srv, keys)
        conn = connect(srv.url)
        request = post(check("dev-00000"), fleet.tokens["dev-00000"])
        assert json.loads(conn.ask(request)[2])["update"] is True  # the caches filled
        before, sent = at_once(srv.url), 0
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            status, _, body, _ = conn.ask(request)
            assert status == 200 and json.loads(body)["update"] is True
            sent += 1
            time.sleep(0.01)
        assert sent > 100
        assert at_once(srv.url) - before == sent


def test_an_access_log_logs_every_check_none_answered_at_once(keys: Keys, tmp_path: Path) -> None:
    from serve_support import serving, store_args
    from server_support import free_port

    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    fleet = register(db, 1)
    log = tmp_path / "serve.log"
    args = [*store_args(db, keys, tmp_path / "artifacts"), "--cache-seconds", "10"]
    with serving(*args, "--access-log", port=free_port(), log=log) as (url, _):
        conn = connect(url)
        for _ in range(3):
            assert conn.ask(post(check("dev-00000"), fleet.tokens["dev-00000"]))[0] == 200
        assert at_once(url) == 0
        assert log.read_text().count('"POST /v1/device/check HTTP/1.1" 200') == 3


def test_a_check_under_way_at_shutdown_is_answered_then_closed(keys: Keys, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    fleet = register(db, 1)
    request = post(check("dev-00000"), fleet.tokens["dev-00000"])
    with running_server(config_for(db, keys, tmp_path, cache_seconds=CACHE_SECONDS)) as srv:
        conn = connect(srv.url)
        assert conn.ask(request)[0] == 200  # the caches filled: the next one is answered here
        idle = connect(srv.url)
        assert idle.ask(request)[0] == 200
        conn.sock.sendall(request[:-10])  # its head and most of its body
        time.sleep(0.2)
        srv.server.should_exit = True  # a graceful shutdown (SIGTERM) begins
        time.sleep(0.5)
        assert idle.closed()  # an idle kept-alive connection is closed
        conn.sock.sendall(request[-10:])
        status, headers, body, _ = conn.answer()
        assert status == 200 and json.loads(body)["update"] is False
        assert headers["connection"] == "close" and conn.closed()


# -- reports: taken in the protocol, answered once stored ----------------------------------


def counts(srv: Running, rid: int) -> dict[str, int]:
    with srv.admin() as admin:
        got: dict[str, int] = admin.get(f"/v1/admin/releases/{rid}").json()["release"]["counts"]
        return got


def test_a_report_taken_at_once_is_stored_and_answered_as_the_app_answers(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(db_url, 4)
    cfg = config_for(db_url, keys, tmp_path, cache_seconds=CACHE_SECONDS)
    with both_servers(cfg) as (srv, app_srv):
        rid = promoted(srv, keys)
        fast, slow = connect(srv.url), connect(app_srv.url)
        for conn, hw in ((fast, "dev-00002"), (slow, "dev-00003"), (fast, "dev-00000")):
            status, _, body, _ = conn.ask(post(check(hw), fleet.tokens[hw]))  # caches filled
            assert status == 200 and json.loads(body)["update"] is True
        assert at_once(srv.url, "reports") == 0
        ours = fast.ask(reported("dev-00002", fleet.tokens["dev-00002"]))
        apps = slow.ask(reported("dev-00003", fleet.tokens["dev-00003"]))
        assert ours[0] == 200 and ours[2] == apps[2] == b'{"recorded":true}', (ours, apps)
        assert without_date(ours[3]) == without_date(apps[3])
        assert at_once(srv.url, "reports") == 1 and at_once(app_srv.url, "reports") == 0
        # stored (acknowledged only so) and counted, as the app's: both devices rolled back
        assert counts(srv, rid)["rolled_back"] == 2
        # not offered again: the directory holds the rolled-back release for the device
        status, _, body, _ = fast.ask(post(check("dev-00002"), fleet.tokens["dev-00002"]))
        assert status == 200 and json.loads(body)["update"] is False
        # a report about a version never offered is kept, not counted, also at once
        ours = fast.ask(reported("dev-00000", fleet.tokens["dev-00000"], version="9.9.9"))
        assert ours[0] == 200 and at_once(srv.url, "reports") == 2
        assert counts(srv, rid)["rolled_back"] == 2


def test_a_reports_errors_are_the_apps_errors(keys: Keys, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    fleet = register(db, 2)
    token = fleet.tokens["dev-00000"]
    cfg = config_for(
        db,
        keys,
        tmp_path,
        cache_seconds=CACHE_SECONDS,
        limits=ServerLimits(report_rate_per_minute=1, report_burst=3),
    )
    with both_servers(cfg) as (srv, app_srv):
        fast, slow = connect(srv.url), connect(app_srv.url)
        assert fast.ask(post(check("dev-00000"), token))[0] == 200  # the caches filled
        wrong = [
            (403, reported("dev-00001", token)),  # another device's hardware id
            (403, reported("dev-00000", "tok-not-a-device")),
            (401, reported("dev-00000", None)),
            (400, post(b'{"hardware_id": "dev-00000", ', token, path="report")),
            (400, post(b"[1, 2]", token, path="report")),
            (400, reported("dev-00000", token, event="exploded")),
            (400, reported("dev-00000", token, version="1.0.0 beta")),
            (400, reported("dev-00000", token, app="no such app!")),
            (400, reported("dev-00000", token, channel="Nightly!")),
            (413, reported("dev-00000", token, note="x" * 5000)),
        ]
        for status, request in wrong:
            ours, apps = fast.ask(request), slow.ask(request)
            assert (ours[0], ours[2]) == (apps[0], apps[2]) and ours[0] == status, (ours, apps)
            assert list(json.loads(ours[2])) == ["error"]
        assert at_once(srv.url, "reports") == 0  # none of them was taken in the protocol
        good = reported("dev-00000", token)
        for _ in range(3):  # the burst
            assert fast.ask(good)[0] == 200 and slow.ask(good)[0] == 200
        ours, apps = fast.ask(good), slow.ask(good)  # over the device's rate: the app's 429
        assert ours[0] == apps[0] == 429 and ours[2] == apps[2]
        assert ours[1]["retry-after"] == apps[1]["retry-after"]
        assert at_once(srv.url, "reports") == 3


def test_a_report_the_database_cannot_store_gets_the_apps_503(keys: Keys, tmp_path: Path) -> None:
    from postgres import PostgresServer

    with PostgresServer() as pg:
        fleet = register(pg.url, 2)
        cfg = config_for(pg.url, keys, tmp_path, cache_seconds=CACHE_SECONDS)
        with both_servers(cfg) as (srv, app_srv):
            fast, slow = connect(srv.url), connect(app_srv.url)
            for conn in (fast, slow):  # the device and the channel's releases held
                assert conn.ask(post(check("dev-00000"), fleet.tokens["dev-00000"]))[0] == 200
            pg.stop()
            request = reported("dev-00000", fleet.tokens["dev-00000"])
            ours, apps = fast.ask(request), slow.ask(request)
            assert ours[0] == apps[0] == 503, (ours, apps)
            assert ours[2] == apps[2] and json.loads(ours[2])["error"].startswith(
                "service unavailable"
            )
            assert without_date(ours[3]) == without_date(apps[3])  # Retry-After too
            assert at_once(srv.url, "reports") == 1  # taken here, not acknowledged
            pg.start()
            for _ in range(50):  # the pool reconnects; the device asks again
                ours = fast.ask(request)
                if ours[0] == 200:
                    break
                time.sleep(0.2)
            assert ours[0] == 200 and ours[2] == b'{"recorded":true}'


def test_reports_pipelined_closing_or_at_shutdown_are_answered_in_order(
    keys: Keys, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    fleet = register(db, 1)
    token = fleet.tokens["dev-00000"]
    a_check, a_report = post(check("dev-00000"), token), reported("dev-00000", token)
    with running_server(config_for(db, keys, tmp_path, cache_seconds=CACHE_SECONDS)) as srv:
        conn = connect(srv.url)
        assert conn.ask(a_check)[0] == 200
        # a check pipelined behind a report waits for the report's answer; then at once
        conn.sock.sendall(a_report + a_check + a_report + a_check)
        answers = [conn.answer() for _ in range(4)]
        assert [a[0] for a in answers] == [200] * 4
        assert [b"recorded" in a[2] for a in answers] == [True, False, True, False]
        assert at_once(srv.url, "reports") == 1  # the requests queued behind it: the app's
        status, headers, body, _ = conn.ask(reported("dev-00000", token, "Connection: close"))
        assert (status, body) == (200, b'{"recorded":true}') and headers["connection"] == "close"
        assert conn.closed() and at_once(srv.url, "reports") == 2
        slow = connect(srv.url)
        slow.sock.sendall(a_report[:-5])  # a report's body still arriving at a shutdown
        time.sleep(0.2)
        srv.server.should_exit = True
        time.sleep(0.3)
        slow.sock.sendall(a_report[-5:])
        status, headers, body, _ = slow.answer()
        assert (status, body) == (200, b'{"recorded":true}') and headers["connection"] == "close"
        assert slow.closed()
    with sqlite3.connect(tmp_path / "mpseal.db") as stored:  # every acknowledged one
        query = "SELECT count(*) FROM events WHERE kind = 'update-rolled_back'"
        assert stored.execute(query).fetchone() == (4,)


def test_reports_taken_at_once_halt_a_failing_release(keys: Keys, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    fleet = register(db, 6)
    cfg = config_for(db, keys, tmp_path, cache_seconds=CACHE_SECONDS)  # halts at 5, > 20 %
    with running_server(cfg) as srv:
        rid = promoted(srv, keys)
        conns = {hw: connect(srv.url) for hw in fleet.tokens}
        for hw, conn in conns.items():  # each device held, and offered the release
            status, _, body, _ = conn.ask(post(check(hw), fleet.tokens[hw]))
            assert status == 200 and json.loads(body)["update"] is True
        for i, (hw, conn) in enumerate(list(conns.items())[:5]):
            assert conn.ask(reported(hw, fleet.tokens[hw]))[0] == 200
            with srv.admin() as admin:
                state = admin.get(f"/v1/admin/releases/{rid}").json()["release"]["state"]
            assert state == ("halted" if i == 4 else "active"), (i, state)
        assert at_once(srv.url, "reports") == 5
        status, _, body, _ = conns["dev-00005"].ask(
            post(check("dev-00005"), fleet.tokens["dev-00005"])
        )
        assert status == 200 and json.loads(body)["update"] is False  # offered to no one


def test_a_maintenance_round_drops_only_the_timestamps_it_signed_again(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A maintenance round (every 30 s) keeps each channel's timestamp fresh. One that signs
    nothing again leaves the held timestamp held: the next check finds it and is answered in
    the protocol (the round used to drop every channel's, and the checks of the next
    milliseconds went through the app to wait for the reload). One that signs a timestamp
    again (near its expiry) drops it: the new one is served from then on."""
    import asyncio

    from mpseal.server.service import UpdateServer

    register(db_url, 1)  # the schema
    server = UpdateServer(config_for(db_url, keys, tmp_path, cache_seconds=CACHE_SECONDS))

    async def main() -> None:
        first = await server.timestamp("stable")
        assert first is not None
        await server.maintain()
        held = server.timestamp_now("stable")
        assert held is not None and held[0] is first
        server.timestamps.refresh_before = server.timestamps.expiry + 1  # every one is due
        await server.maintain()
        assert server.timestamp_now("stable") is None
        second = await server.timestamp("stable")
        assert second is not None and second.version > first.version

    try:
        asyncio.run(main())
    finally:
        server.store.close()
        server.store.registry.engine.dispose()
