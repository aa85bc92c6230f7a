"""The console over plain HTTP: no page without the admin login, the session cookie's
flags, CSRF on every POST, the pages at a glance, and device log uploads (bounded,
rate-limited). The browser test is tests/test_console_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from server_support import (
    ADMIN_TOKEN,
    config_for,
    make_artifact,
    make_keys,
    register,
    running_server,
)

from mpseal.fleet import devicelogs
from mpseal.fleet.auditlog import AuditLog
from mpseal.fleet.registry import Registry

PAGES = [
    "/console/",
    "/console/devices",
    "/console/devices/dev-00000",
    "/console/releases/1",
    "/console/certificates",
    "/console/audit",
]


def _login(client: httpx.Client) -> str:
    r = client.post(
        "/console/login",
        data={"token": ADMIN_TOKEN, "next": "/console/"},
        headers={"Origin": str(client.base_url).rstrip("/")},
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert m
    return m.group(1)


@pytest.fixture
def world(tmp_path: Path):
    db_url = f"sqlite:///{tmp_path / 'mpseal.db'}"
    keys = make_keys(tmp_path / "keys")
    fleet = register(db_url, 20)
    with running_server(config_for(db_url, keys, tmp_path)) as srv, srv.admin() as admin:
        r = admin.post("/v1/admin/releases", content=make_artifact(keys.release, "1.1.0", 2))
        assert r.status_code == 201
        yield srv, fleet, db_url


def test_console_pages_need_the_admin_login(world) -> None:
    srv, _, _ = world
    with httpx.Client(base_url=srv.url) as c:
        for path in PAGES:
            r = c.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
        # a forged or stale cookie is no session
        c.cookies.set("mpseal_console", "0123456789abcdef.9999999999.00.ff", path="/console")
        assert c.get("/console/").status_code == 303
        r = c.post("/console/login", data={"token": "wrong"})
        assert r.status_code == 401 and "not accepted" in r.text
        assert "set-cookie" not in r.headers


def test_console_session_cookie_flags_and_pages(world) -> None:
    srv, _, _ = world
    with httpx.Client(base_url=srv.url) as c:
        r = c.post("/console/login", data={"token": ADMIN_TOKEN})
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        assert ADMIN_TOKEN not in cookie
        for path in PAGES:
            page = c.get(path)
            assert page.status_code == 200, (path, page.text[:300])
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert "//" not in re.sub(
                r"https?://127\.0\.0\.1:\d+",
                "",
                " ".join(re.findall(r'(?:src|href)="([^"]+)"', page.text)),
            )
        assert c.get("/console/static/htmx.min.js").status_code == 200


def test_console_post_without_csrf_token_is_refused(world) -> None:
    srv, _, db_url = world
    with httpx.Client(base_url=srv.url) as c:
        csrf = _login(c)
        r = c.post("/console/releases/1/promote", data={"percent": "50"})
        assert r.status_code == 403
        r = c.post("/console/releases/1/promote", data={"percent": "50", "csrf": "0" * 40})
        assert r.status_code == 403
        # the right token from another site's page: refused by its Origin
        r = c.post(
            "/console/releases/1/promote",
            data={"percent": "50", "csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
        assert r.status_code == 403
        assert [e.action for e in AuditLog(Registry.open(db_url)).page()] == ["publish", "config"]
        r = c.post("/console/releases/1/promote", data={"percent": "50", "csrf": csrf})
        assert r.status_code == 303
        entries = AuditLog(Registry.open(db_url)).page()
        assert entries[0].action == "promote" and entries[0].detail == {"percent": 50.0}
        assert entries[0].actor.startswith("token:")


def test_device_log_upload_bounded_and_rate_limited(world) -> None:
    srv, fleet, db_url = world
    hw = "dev-00003"
    with httpx.Client(base_url=srv.url, headers=fleet.headers(hw)) as c:
        r = c.post(
            "/v1/device/logs",
            json={
                "hardware_id": hw,
                "lines": [
                    ["guard", "staged hello 1.1.0 (counter 2) in slot b for a trial boot"],
                    ["app", "<script>alert(1)</script>\x1b[31m" + "x" * 500],
                ],
            },
        )
        assert r.status_code == 200 and r.json() == {"recorded": 2}
        too_many = [["app", "l"]] * (devicelogs.LINES_MAX + 1)
        assert c.post("/v1/device/logs", json={"lines": too_many}).status_code == 400
        assert c.post("/v1/device/logs", json={"lines": [["kernel", "x"]]}).status_code == 400
        other = c.post("/v1/device/logs", json={"hardware_id": "dev-00004", "lines": []})
        assert other.status_code == 403
        codes = [
            c.post("/v1/device/logs", json={"lines": [["app", f"n{i}"]]}).status_code
            for i in range(devicelogs.BATCH_BURST + 2)
        ]
        assert 429 in codes
    lines = devicelogs.recent(Registry.open(db_url), 4)
    assert lines[0].line.startswith("staged hello 1.1.0")
    assert len(lines[1].line) == devicelogs.LINE_MAX and "\x1b" not in lines[1].line
    with httpx.Client(base_url=srv.url) as c:
        _login(c)
        page = c.get(f"/console/devices/{hw}").text
        assert "staged hello 1.1.0" in page
        assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_device_log_keeps_the_newest_lines(tmp_path: Path, monkeypatch) -> None:
    db_url = f"sqlite:///{tmp_path / 'mpseal.db'}"
    register(db_url, 1)
    reg = Registry.open(db_url)
    monkeypatch.setattr(devicelogs, "KEEP_PER_DEVICE", 30)
    for i in range(10):
        devicelogs.append(reg, 1, [("app", f"line {i}-{j}") for j in range(10)])
    kept = devicelogs.recent(reg, 1, 1000)
    assert len(kept) == 30 and kept[-1].line == "line 9-9" and kept[0].line == "line 7-0"


def test_console_session_holds_across_the_workers_of_mpseal_serve(project: Path) -> None:
    """`mpseal serve --workers 2`: a session made by one worker is good on the other (each
    request on a new connection, so both workers answer some)."""
    from serve_support import project_server

    with project_server(project, "--workers", "2") as url:
        with httpx.Client(base_url=url) as c:
            r = c.post("/console/login", data={"token": ADMIN_TOKEN})
            assert r.status_code == 303
            cookie = c.cookies.get("mpseal_console")
        assert cookie
        for _ in range(16):
            with httpx.Client(base_url=url, cookies={"mpseal_console": cookie}) as fresh:
                assert fresh.get("/console/audit").status_code == 200


def test_fleet_overview_counts(tmp_path: Path) -> None:
    """Devices by state, by version and by last check-in, from one pass over the inventory."""
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    from mpseal.fleet import consoledata

    db_url = f"sqlite:///{tmp_path / 'mpseal.db'}"
    register(db_url, 6)
    reg = Registry.open(db_url)
    now = datetime.now(UTC)
    ages = {
        1: timedelta(minutes=30),
        2: timedelta(hours=2),
        3: timedelta(days=3),
        4: timedelta(days=10),
        5: timedelta(days=40),
    }
    with reg.engine.begin() as conn:
        for d, age in ages.items():
            conn.execute(
                sa.text(
                    "INSERT INTO device_status (device_id, app, version, "
                    "last_check_at) VALUES (:d, 'hello', :v, :t)"
                ),
                {"d": d, "v": "1.0.0" if d < 4 else "2.0.0", "t": now - age},
            )
        conn.execute(sa.text("UPDATE devices SET state = 'revoked' WHERE id = 6"))
    o = consoledata.fleet_overview(reg, now)
    assert o["total"] == 6 and o["by_state"] == {"active": 5, "revoked": 1}
    assert o["by_version"] == [("hello", "1.0.0", 3), ("hello", "2.0.0", 2)]
    assert o["seen"] == [("1 hour", 1), ("1 day", 2), ("7 days", 3), ("30 days", 4)]
    assert o["never_seen"] == 1
