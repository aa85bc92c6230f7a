"""Staged rollouts on the real server, on SQLite and PostgreSQL: percentage cohorts, groups,
pins, automatic halt on failures and on unconfirmed trials, pause and resume."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from server_support import (
    Keys,
    config_for,
    make_artifact,
    make_keys,
    register,
    running_server,
    schema_at,
)

from mpseal.fleet.rollout import HaltPolicy, cohort_bucket
from mpseal.formats.updatemeta import parse_timestamp


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


def body(hw: str, version: str = "1.0.0", counter: int = 1) -> dict[str, object]:
    return {
        "hardware_id": hw,
        "board": "esp32",
        "app": "hello",
        "version": version,
        "counter": counter,
        "timestamp_version": 0,
    }


def offered(dev: httpx.Client, fleet, hws) -> set[str]:  # type: ignore[no-untyped-def]
    out = set()
    for hw in hws:
        r = dev.post("/v1/device/check", json=body(hw), headers=fleet.headers(hw))
        assert r.status_code == 200, r.text
        if r.json()["update"]:
            out.add(hw)
    return out


def report(dev: httpx.Client, fleet, hw: str, event: str, version: str = "1.1.0") -> dict:  # type: ignore[no-untyped-def]
    r = dev.post(
        "/v1/device/report",
        headers=fleet.headers(hw),
        json={
            "hardware_id": hw,
            "event": event,
            "version": version,
            "app": "hello",
            "board": "esp32",
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


@contextmanager
def serving(
    db_url: str, keys: Keys, tmp_path: Path, **overrides: object
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """A server with no cache on the database: (admin client, unauthenticated device client)."""
    cfg = config_for(db_url, keys, tmp_path, cache_seconds=0.0, **overrides)
    with running_server(cfg) as srv, srv.admin() as admin, httpx.Client(base_url=srv.url) as dev:
        yield admin, dev


def publish(
    admin: httpx.Client, keys: Keys, version: str = "1.1.0", percent: int | None = 100
) -> int:
    """Upload release ``version`` of hello and promote it to ``percent`` of the fleet (None: to
    no one yet); returns its id."""
    rid: int = admin.post(
        "/v1/admin/releases", content=make_artifact(keys.release, version, 2)
    ).json()["release"]["id"]
    if percent is not None:
        admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": percent})
    return rid


def release(admin: httpx.Client, rid: int) -> dict:  # type: ignore[type-arg]
    return admin.get(f"/v1/admin/releases/{rid}").json()["release"]  # type: ignore[no-any-return]


def signed_timestamp(dev: httpx.Client, fleet, keys: Keys, hw: str):  # type: ignore[no-untyped-def]
    """The stable timestamp the server signs, as device ``hw`` fetches it, checked."""
    return parse_timestamp(
        dev.get("/v1/timestamp/stable.mpst", headers=fleet.headers(hw)).content, keys.trust_root
    )


def test_cohort_groups_and_pins(db_url: str, keys: Keys, tmp_path: Path) -> None:
    beta = {f"dev-{i:05d}" for i in range(190, 200)}
    fleet = register(db_url, 200, groups=dict.fromkeys(beta, "beta"))
    hws = sorted(fleet.tokens)
    with serving(db_url, keys, tmp_path) as (admin, dev):
        rid = publish(admin, keys, percent=None)
        assert offered(dev, fleet, hws) == set()  # published, promoted to no one

        admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 10})
        ten = offered(dev, fleet, hws)
        assert 10 <= len(ten) <= 32  # 10% of 200, binomial spread
        assert ten == {hw for hw in hws if cohort_bucket(rid, hw) < 10}

        admin.post(f"/v1/admin/releases/{rid}/promote", json={"group": "beta"})
        assert offered(dev, fleet, hws) == ten | beta

        outsider = next(hw for hw in hws if hw not in ten | beta)
        r = admin.post(f"/v1/admin/releases/{rid}/promote", json={"pin": outsider})
        assert r.json()["release"]["pins"] == [outsider]
        assert offered(dev, fleet, hws) == ten | beta | {outsider}

        admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 50})
        fifty = offered(dev, fleet, hws)
        assert ten <= fifty and 80 <= len(fifty - beta - {outsider}) <= 120

        assert (
            admin.post(
                f"/v1/admin/releases/{rid}/promote", json={"pin": "no-such-device"}
            ).status_code
            == 409
        )
        assert (
            admin.post(
                f"/v1/admin/releases/{rid}/promote", json={"percent": 10, "group": "x"}
            ).status_code
            == 400
        )
        assert (
            admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 101}).status_code
            == 400
        )


def test_release_halts_itself_when_too_many_devices_fail(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(db_url, 8)
    hws = sorted(fleet.tokens)
    with serving(db_url, keys, tmp_path) as (admin, dev):
        rid = publish(admin, keys)
        for hw in hws[:5]:
            report(dev, fleet, hw, "downloaded")
        assert report(dev, fleet, hws[0], "rolled_back") == {"recorded": True}  # 1 of 5: 20%
        state = release(admin, rid)["state"]
        assert state == "active"
        assert report(dev, fleet, hws[1], "refused") == {"recorded": True}  # 2 of 5: 40%

        rel = release(admin, rid)
        assert rel["state"] == "halted"
        assert rel["halt_reason"] == (
            "2 of 5 devices failed (1 refused, 1 rolled back), above the 20% limit"
        )
        assert rel["counts"]["failed"] == 2 and rel["counts"]["in_progress"] == 3
        # Offered to no one, gone from the signed timestamp, and it stays halted: resuming
        # overrides the server, so it needs a reason (the 409 says how); no promote either.
        assert offered(dev, fleet, hws) == set()
        ts = signed_timestamp(dev, fleet, keys, hws[7])
        assert ts.targets == ()
        r = admin.post(f"/v1/admin/releases/{rid}/resume")
        assert r.status_code == 409 and "--reason" in r.json()["error"], r.text
        assert (
            admin.post(f"/v1/admin/releases/{rid}/resume", json={"reason": ""}).status_code == 409
        )
        assert admin.post(f"/v1/admin/releases/{rid}/pause").status_code == 409
        assert (
            admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100}).status_code
            == 409
        )
        assert release(admin, rid)["state"] == "halted"

        # A fixed version is a new release: offered to everyone, those that failed 1.1.0 too.
        publish(admin, keys, "1.1.1")
        assert offered(dev, fleet, hws) == set(hws)


def test_resume_after_halt_needs_a_reason_counts_afresh_and_keeps_the_history(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A release manager resumes a halted release with a reason: it is offered again (not
    to the devices that failed it), its halt history and the audit log say who and why,
    and only failures after the resume count: the ones that halted it do not halt it
    again at once, new ones past the limit do."""
    fleet = register(db_url, 12)
    hws = sorted(fleet.tokens)
    with serving(db_url, keys, tmp_path) as (admin, dev):
        rid = publish(admin, keys)
        for hw in hws[:5]:
            report(dev, fleet, hw, "downloaded")
        report(dev, fleet, hws[0], "rolled_back")
        report(dev, fleet, hws[1], "refused")
        halted = release(admin, rid)
        assert halted["state"] == "halted"
        first_reason = halted["halt_reason"]
        assert halted["halts"] == [
            {
                "halted_at": halted["halts"][0]["halted_at"],
                "reason": first_reason,
                "resumed_at": None,
                "resumed_by": None,
                "resume_reason": None,
            }
        ]

        why = "sensor batch 7 was bad; replaced in the field"
        r = admin.post(f"/v1/admin/releases/{rid}/resume", json={"reason": why})
        assert r.status_code == 200, r.text
        rel = r.json()["release"]
        assert rel["state"] == "active" and rel["halt_reason"] is None
        (h,) = rel["halts"]
        assert h["reason"] == first_reason and h["resume_reason"] == why
        assert h["resumed_by"].startswith("token:") and h["resumed_at"] >= h["halted_at"]
        # The whole history still counts for the page; the halt counts from here.
        assert rel["counts"]["failed"] == 2 and rel["counts"]["attempts"] == 5
        assert rel["counts_since_resume"]["failed"] == 0
        assert rel["counts_since_resume"]["attempts"] == 3  # still in progress at the resume
        # Offered again, named by the signed timestamp, but not to the devices that failed.
        ts = signed_timestamp(dev, fleet, keys, hws[7])
        assert [t.version for t in ts.targets] == ["1.1.0"]
        assert offered(dev, fleet, hws) == set(hws[2:])

        # One more failure: 3 of 5 devices overall (60 %) would halt it at once, but since
        # the resume it is 1 of 3 devices, below the 5 the policy needs: still active.
        report(dev, fleet, hws[2], "rolled_back")
        rel = release(admin, rid)
        assert rel["state"] == "active", rel
        assert rel["counts_since_resume"]["failed"] == 1

        # New devices take it; then failures past the limit since the resume halt it again.
        for hw in hws[5:10]:
            report(dev, fleet, hw, "confirmed")
        report(dev, fleet, hws[3], "refused")
        rel = release(admin, rid)
        assert rel["state"] == "halted", rel
        assert rel["halt_reason"] == (
            "2 of 8 devices failed since it was resumed (1 refused, 1 rolled back), "
            "above the 20% limit"
        )
        assert [x["reason"] for x in rel["halts"]] == [first_reason, rel["halt_reason"]]
        assert rel["halts"][1]["resumed_at"] is None

        log = admin.get("/v1/admin/audit-log", params={"action": "resume"}).json()["entries"]
        assert len(log) == 1 and log[0]["detail"]["reason"] == why
        assert log[0]["detail"]["halt_reason"] == first_reason
        assert log[0]["detail"]["from"] == "halted" and log[0]["detail"]["to"] == "active"
        halts = admin.get("/v1/admin/audit-log", params={"action": "halt"}).json()["entries"]
        assert [e["actor"] for e in halts] == ["server", "server"]


def test_a_device_that_rolled_back_is_not_offered_the_same_release_again(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(db_url, 2)
    with serving(db_url, keys, tmp_path) as (admin, dev):
        publish(admin, keys)
        report(dev, fleet, "dev-00000", "rolled_back")
        assert offered(dev, fleet, ["dev-00000", "dev-00001"]) == {"dev-00001"}


def test_unconfirmed_trials_halt_the_release(db_url: str, keys: Keys, tmp_path: Path) -> None:
    fleet = register(db_url, 6)
    hws = sorted(fleet.tokens)
    with serving(
        db_url,
        keys,
        tmp_path,
        maintenance_seconds=0.3,
        halt_policy=HaltPolicy(min_attempts=5, max_failure_ratio=0.2, trial_window_seconds=1),
    ) as (admin, dev):
        rid = publish(admin, keys)
        for hw in hws[:5]:
            report(dev, fleet, hw, "booted")  # trial boots, never confirmed
        report(dev, fleet, hws[0], "confirmed")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rel = release(admin, rid)
            if rel["state"] == "halted":
                break
            time.sleep(0.2)
        assert rel["state"] == "halted", rel
        # Halted as soon as enough trials were overdue (how many depends on timing).
        assert re.fullmatch(
            r"[2-4] of [56] devices failed \([2-4] trial not confirmed\), "
            r"above the 20% limit",
            rel["halt_reason"],
        ), rel["halt_reason"]
        assert offered(dev, fleet, hws[5:]) == set()


def test_pause_and_resume(db_url: str, keys: Keys, tmp_path: Path) -> None:
    fleet = register(db_url, 3)
    hws = sorted(fleet.tokens)
    with serving(db_url, keys, tmp_path) as (admin, dev):
        rid = publish(admin, keys)
        assert offered(dev, fleet, hws) == set(hws)
        assert admin.post(f"/v1/admin/releases/{rid}/pause").json()["release"]["state"] == "paused"
        assert offered(dev, fleet, hws) == set()
        # Paused leaves the signed timestamp: a mirror cannot offer it either.
        ts = signed_timestamp(dev, fleet, keys, hws[0])
        assert [t.version for t in ts.targets] == []
        assert admin.post(f"/v1/admin/releases/{rid}/resume").json()["release"]["state"] == "active"
        assert offered(dev, fleet, hws) == set(hws)


def test_releases_halted_before_migration_0007_keep_their_halt_and_can_be_resumed(
    db_url: str,
) -> None:
    """A database from before the halt history: the upgrade records each halted
    release's halt from the release row, and it resumes like any other."""
    import sqlalchemy as sa

    from mpseal.fleet.registry import Registry
    from mpseal.fleet.releasestore import ReleaseStore

    reg = Registry.open(db_url, upgrade=False)
    with reg.engine.begin() as conn:
        schema_at(conn, "0006")
        conn.execute(
            sa.text(
                "INSERT INTO releases (app, board, version, counter, manifest_sha256, "
                "file_sha256, size, channel, state, percent, groups, halt_reason, "
                "cohort_size, created_at, updated_at) VALUES ('hello', 'esp32', '1.1.0', 2, "
                ":m, :f, 10, 'stable', 'halted', 10, '[]', :why, 0, :t, :t)"
            ),
            {
                "m": "a" * 64,
                "f": "b" * 64,
                "why": "3 of 5 devices failed (3 rolled back), above the 20% limit",
                "t": datetime.now(UTC),
            },
        )
    reg.upgrade()
    store = ReleaseStore(reg)
    try:
        (rel,) = store.releases()
        assert rel.view.state == "halted"
        assert [h.reason for h in rel.halts] == [rel.halt_reason]
        resumed = store.set_state(rel.view.id, "active", who="token:test", reason="checked")
        assert resumed.view.state == "active" and resumed.halt_reason is None
        (h,) = resumed.halts
        assert (h.resumed_by, h.resume_reason) == ("token:test", "checked")
        assert resumed.stats.base is not None and resumed.stats.since_resume().attempts == 0
    finally:
        store.close()
        reg.engine.dispose()


def test_a_resume_through_another_server_lets_this_one_halt_again(
    db_url: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers on one database: A halted the release, B resumed it; A's new failure
    reports halt it again (A looks again after HALTED_RECHECK_SECONDS, 0 here)."""
    from mpseal.server import service

    monkeypatch.setattr(service, "HALTED_RECHECK_SECONDS", 0.0)
    fleet = register(db_url, 12)
    hws = sorted(fleet.tokens)
    cfg = config_for(db_url, keys, tmp_path, cache_seconds=0.0)
    with (
        running_server(cfg) as a,
        running_server(cfg) as b,
        a.admin() as admin_a,
        b.admin() as admin_b,
        httpx.Client(base_url=a.url) as dev,
    ):
        rid = publish(admin_a, keys)
        for hw in hws[:5]:
            report(dev, fleet, hw, "downloaded")
        for hw in hws[:2]:
            report(dev, fleet, hw, "rolled_back")
        assert release(admin_a, rid)["state"] == "halted"
        r = admin_b.post(f"/v1/admin/releases/{rid}/resume", json={"reason": "false alarm"})
        assert r.json()["release"]["state"] == "active", r.text
        for hw in hws[5:8]:
            report(dev, fleet, hw, "confirmed")
        for hw in hws[2:4]:
            report(dev, fleet, hw, "refused")  # 2 of 6 since the resume: above 20 %
        rel = release(admin_b, rid)
        assert rel["state"] == "halted", rel
        assert len(rel["halts"]) == 2
