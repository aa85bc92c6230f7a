"""The console in a real headless Chromium (Debian's chromium, driven by Playwright with
executable_path: no browser download) against the real server on TLS, with virtual
boards (the unix MicroPython VM) and a simulated fleet speaking the device API: log in
with the keyboard, roll a release out to 10 % and watch the chart and counts move
(polled, no page reload), pause and resume it, see it halt after rollbacks with the
reason, resume it (the server asks for a reason first; then the halt and the resume stay
in the release's halt history), open a board's page and read its guard log, revoke it
(the board is then refused), and find each action in the audit log, which verifies. Screenshots of the main pages go to
test-output/console/ (not committed)."""

from __future__ import annotations

import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from ota_support import World, ota_world
from playwright.sync_api import Page, expect, sync_playwright
from server_support import ADMIN_TOKEN, register

from mpseal.fleet import consoledata
from mpseal.fleet.auditlog import AuditLog
from mpseal.fleet.registry import Registry

pytestmark = pytest.mark.slow  # tests/conftest.py: long files start first

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "console"
FLEET = 300  # simulated devices; 10 % of them are offered the release
WHY = "rollbacks were one bad sensor batch"


@pytest.fixture
def world(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(consoledata, "SAMPLE_MIN_GAP", 0.5)  # the chart moves in seconds
    with ota_world(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", project) as w:
        yield w


class SimFleet:
    """Devices that poll and report through the device API over TLS, as boards do."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.fleet = register(world.db_url, FLEET, prefix="sim", board="unix")
        ctx = ssl.create_default_context(cafile=str(world.ca_dir / "root.pem"))
        self.http = httpx.Client(base_url=world.server_url, verify=ctx, timeout=30)
        world.clients.append(self.http)
        self.offered: list[str] = []

    def _post(self, hw: str, path: str, body: dict[str, object]) -> httpx.Response:
        return self.http.post(
            path, json={"hardware_id": hw, **body}, headers=self.fleet.headers(hw)
        )

    def check_all(self) -> None:
        for hw in self.fleet.tokens:
            r = self._post(
                hw,
                "/v1/device/check",
                {
                    "app": "hello",
                    "board": "unix",
                    "version": "1.0.0",
                    "counter": 1,
                    "channel": "stable",
                    "timestamp_version": 0,
                },
            )
            assert r.status_code == 200, r.text
            if r.json()["update"] and hw not in self.offered:
                self.offered.append(hw)

    def report(self, hw: str, *events: str, version: str = "2.0.0") -> None:
        for event in events:
            r = self._post(
                hw,
                "/v1/device/report",
                {
                    "event": event,
                    "version": version,
                    "app": "hello",
                    "board": "unix",
                    "channel": "stable",
                    "reason": "health check failed" if event == "rolled_back" else "",
                },
            )
            assert r.status_code == 200, r.text


def lapse_soon(db_url: str, days: dict[str, int]) -> None:
    """Some of the fleet's certificates end soon (the registry as renewal would leave it)."""
    engine = Registry.open(db_url).engine
    with engine.begin() as conn:
        for hw, d in days.items():
            conn.execute(
                sa.text(
                    "UPDATE certificates SET not_after = :t WHERE device_id = "
                    "(SELECT id FROM devices WHERE hardware_id = :hw)"
                ),
                {"t": datetime.now(UTC) + timedelta(days=d), "hw": hw},
            )
    engine.dispose()


def _login(page: Page, url: str) -> None:
    page.goto(url + "/console/releases/1")
    expect(page).to_have_url(url + "/console/login?next=%2Fconsole%2Freleases%2F1")
    if page.evaluate("document.activeElement.id") != "token":
        page.keyboard.press("Tab")  # the first stop is the token field
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.type(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_contain_text("hello 2.0.0")


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_console_rollout_halt_resume_device_log_revoke_audit(world: World) -> None:
    v1 = world.release("1.0.0", 1)
    board = world.board(v1)
    hw = board.hardware_id
    assert world.ota(board) == {"result": "none"}  # its round hands over the guard's log
    with world.admin() as admin:
        r = admin.post("/v1/admin/releases?channel=stable", content=world.release("2.0.0", 2))
        assert r.status_code == 201, r.text
    sims = SimFleet(world)
    lapse_soon(world.db_url, {f"sim-{i:05d}": 1 + 7 * i for i in range(8)})

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        url = world.server_url
        _login(page, url)
        expect(page.locator("#release-state")).to_have_text("active")

        # promote to 10 % with the keyboard: the form field, type, Enter
        page.fill("#percent", "")
        page.focus("#percent")
        page.keyboard.type("10")
        page.keyboard.press("Enter")
        expect(page.locator("#live")).to_contain_text("rollout 10 %")

        sims.check_all()
        offered = list(sims.offered)
        assert 10 <= len(offered) <= 60, len(offered)  # about 10 % of 300
        cut = len(offered) * 2 // 3  # a third of them roll back: above the 20 % limit
        good, bad = offered[:cut], offered[cut:]
        stop = threading.Event()

        def progress() -> None:  # devices take the update one by one while we watch
            for hw_ in good:
                if stop.is_set():
                    return
                sims.report(hw_, "downloaded", "staged", "booted", "confirmed")
                time.sleep(0.05)

        t = threading.Thread(target=progress, daemon=True)
        t.start()
        expect(page.locator("#count-confirmed")).not_to_have_text("0", timeout=20_000)
        first = int(page.inner_text("#count-confirmed"))
        # pause and resume while it rolls out (the buttons are outside the polled part)
        page.get_by_role("button", name="Pause").click()
        expect(page.locator("#release-state")).to_have_text("paused")
        page.get_by_role("button", name="Resume").click()
        expect(page.locator("#release-state")).to_have_text("active")
        page.evaluate("window.__same_page = true")  # gone if the page reloads
        t.join(60)
        expect(page.locator("#count-confirmed")).to_have_text(str(len(good)), timeout=20_000)
        assert int(page.inner_text("#count-confirmed")) > first or first == len(good)
        assert page.evaluate("window.__same_page") is True  # updated in place
        points = page.locator("svg.chart polyline").first.get_attribute("points") or ""
        assert len(points.split()) >= 3  # several samples over time
        _shot(page, "release-rolling-out")

        # rollbacks halt it; the page shows the state and the reason by itself
        for hw_ in bad:
            sims.report(hw_, "downloaded", "staged", "booted", "rolled_back")
        expect(page.locator("#release-state")).to_have_text("halted", timeout=20_000)
        expect(page.locator("#halt-reason")).to_contain_text("rolled back")
        expect(page.locator("#halt-reason")).to_contain_text("above the 20% limit")
        assert page.evaluate("window.__same_page") is True
        _shot(page, "release-halted")
        page.set_viewport_size({"width": 390, "height": 844})
        _shot(page, "release-halted-phone")
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= 390, wide  # no sideways scrolling of the page at phone width
        page.set_viewport_size({"width": 1280, "height": 900})
        # resuming overrides the server's halt: without a reason the console says so ...
        page.get_by_role("button", name="Resume").click()
        expect(page.get_by_role("alert")).to_contain_text("say why")
        page.go_back()
        # ... with one (typed, Enter) it is active again and the halt stays on the page
        page.focus("#resume-reason")
        page.keyboard.type(WHY)
        page.keyboard.press("Enter")
        expect(page.locator("#release-state")).to_have_text("active")
        expect(page.locator("#halt-reason")).to_have_count(0)
        history = page.locator("#halt-history")
        expect(history).to_contain_text("above the 20% limit")
        expect(history).to_contain_text(WHY)
        expect(page.locator("#since-resume")).to_contain_text("0 failed of 0 devices")
        _shot(page, "release-resumed")

        # the overview
        page.get_by_role("link", name="Fleet", exact=True).click()
        expect(page.locator("h1")).to_have_text("Fleet")
        expect(page.locator("main")).to_contain_text(f"{FLEET + 1}")
        _shot(page, "fleet-overview")

        # the virtual board's page: its guard log, then revoke it
        page.goto(f"{url}/console/devices/{hw}")
        log = page.locator("#device-log")
        expect(log).to_contain_text("[guard]")
        guard_lines = [ln for ln in board.status()["log"] if ln.strip()]  # type: ignore[union-attr]
        assert any(ln.split(" ", 1)[-1] in log.inner_text() for ln in guard_lines)
        _shot(page, "device")
        page.fill("#reason", "lost in transit")
        page.fill("#confirm", hw)
        page.get_by_role("button", name="Revoke this device").click()
        expect(page.locator("#device-state")).to_have_text("revoked")
        time.sleep(0.3)  # the device cache (0.1 s here)
        res = board.command("ota", timeout=120)
        assert "403" in (res.stdout + res.stderr) or "revoked" in (res.stdout + res.stderr)

        page.get_by_role("link", name="Certificates").click()
        expect(page.locator("svg.chart title").nth(1)).to_contain_text(": 1")  # this week
        expect(page.locator("main")).to_contain_text("sim-00000")
        expect(page.locator("main")).to_contain_text("Lapsing within 30 days, or lapsed (5)")
        _shot(page, "certificates")

        page.get_by_role("link", name="Audit log").click()
        page.get_by_role("link", name="Verify the chain").click()
        expect(page.locator("#audit-verified")).to_contain_text("Verified")
        rows = page.locator("tbody tr")
        actions = [rows.nth(i).locator("td").nth(3).inner_text() for i in range(rows.count())]
        assert actions[:7] == [
            "revoke",
            "resume",
            "halt",
            "resume",
            "pause",
            "promote",
            "publish",
        ], actions
        expect(rows.nth(1)).to_contain_text(WHY)  # who resumed it after the halt, and why
        expect(page.locator("main")).to_contain_text(f"device {hw}")
        expect(page.locator("main")).to_contain_text("lost in transit")
        _shot(page, "audit")
        stop.set()
        browser.close()
    entries = AuditLog(Registry.open(world.db_url)).page()
    by = {e.action: e.actor for e in entries}
    assert by["halt"] == by["config"] == "server"  # what the server did by itself
    assert by["revoke"] == by["promote"] == by["publish"] and by["revoke"].startswith("token:")
    assert AuditLog(Registry.open(world.db_url)).verify().rows == len(entries)
