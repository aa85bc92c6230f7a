"""Attacks from the update-security review (issue 10, and the device side of 11.8), each
named after the attack: the real device client in the MicroPython VM, the real update
server (TLS) behind a hostile mirror that holds a valid certificate (tests/ota_support.py)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from ota_support import (
    World,
    guard_log,
    offer_json,
    ota_world,
    serve_offer,
    stolen_timestamp,
)

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.formats import artifact as art_mod
from mpseal.formats import manifest as manifest_mod
from mpseal.formats import updatemeta


@pytest.fixture
def world(project: Path, tmp_path: Path):
    with ota_world(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", project) as w:
        yield w


@pytest.fixture
def device(world: World):
    return world.board(world.release("1.0.0", 1))


def runs(board) -> str:
    ran = board.boot().ran()
    return ran[-1][1] if ran else ""


def refused(world: World, board, reason: str, running: str = "1.0.0") -> dict:
    result = world.ota(board)
    assert reason in str(result.get("refused") or result.get("failed")), result
    assert any(reason in ln for ln in guard_log(board)), guard_log(board)[-3:]
    assert runs(board) == running
    return result


def target_for(blob: bytes, path: str = "artifacts/evil.mpseal", **change: object):
    t = updatemeta.Target.for_artifact(blob, path)
    return dataclasses.replace(t, **change) if change else t


def published_target(world: World, version: str) -> updatemeta.Target:
    """The target the server's timestamp names for the published ``version``."""
    rel = next(
        r
        for r in world.admin().get("/v1/admin/releases").json()["releases"]
        if r["version"] == version
    )
    blob = next((world.project / "dist").glob(f"*{version}*.mpseal")).read_bytes()
    return target_for(blob, path=f"artifacts/{rel['file_sha256']}.mpseal")


def release_id(world: World, version: str) -> int:
    return int(
        next(
            r["id"]
            for r in world.admin().get("/v1/admin/releases").json()["releases"]
            if r["version"] == version
        )
    )


def reports_sent(world: World) -> list[dict]:
    return [
        json.loads(body)
        for path, body in world.mirror.requests
        if path == "/v1/device/report" and body
    ]


# -- 1. a stolen timestamp key freezes devices only until the key is rotated -------------


def test_freeze_attack_with_stolen_timestamp_key_recovers_after_rotation(
    world: World, device
) -> None:
    from conftest import run_mpseal

    # The thief signs version 2**53-1: the device remembers it, and every timestamp the
    # real server signs afterwards looks like a replay.
    world.mirror.answer("/v1/device/check", 200, offer_json({"manifest_sha256": "0" * 64}))
    world.mirror.answer(
        "/v1/timestamp/stable.mpst", 200, stolen_timestamp(world, (), version=2**53 - 1)
    )
    world.ota(device)
    world.mirror.rules.clear()
    world.publish(world.release("2.0.0", 2))
    refused(world, device, "replay refused")
    # The operator rotates the timestamp key (trust root 2, signed by the root key). The
    # server, restarted with the new key, signs ordinary versions again (the mirror stands
    # in for it here; the new trust root comes from the real server's /v1/roots/).
    res = run_mpseal("keys", "rotate", "--role", "timestamp", "-C", world.project)
    assert res.returncode == 0, res.stderr
    assert world.proj.trust_root().version == 2
    t = published_target(world, "2.0.0")
    world.mirror.answer(
        "/v1/timestamp/stable.mpst", 200, stolen_timestamp(world, (t,), version=100)
    )  # the NEW key
    world.mirror.answer("/v1/device/check", 200, offer_json(t.to_dict(), 2))
    assert world.ota(device) == {"result": "staged"}
    assert "GET /v1/roots/2.mpsr" in world.mirror.seen
    assert runs(device) == "2.0.0"


# -- 2. a release is for one product -------------------------------------------------------


def other_product(world: World, version: str, counter: int) -> bytes:
    """A release of another product, signed by the same release key (one key, two apps)."""
    base = art_mod.decode(world.release("1.0.0", 1))
    man = manifest_mod.parse(base.manifest_bytes)
    m = dataclasses.replace(man, app="someone-elses-product", version=version, counter=counter)
    keys = [
        PrivateKeySigner.from_pem(p.read_bytes())
        for p in sorted((world.project / "keys").glob("release*.pem"))
    ]
    return art_mod.create(m, base.image, keys).encode()


def test_cross_product_install_refused(world: World, device) -> None:
    """A stolen timestamp key names another product's release (same release key, higher
    counter) under this device's app: it would install and lock the real product out."""
    evil = other_product(world, "9.0.0", 50)
    t = target_for(evil, app="hello")
    serve_offer(world, evil, stolen_timestamp(world, (t,)), t.to_dict())
    refused(world, device, "another product refused")


# -- 3. channels and pauses are signed, not suggested ---------------------------------------


def test_mirror_moves_device_to_other_channel_refused(world: World, device) -> None:
    world.publish(world.release("2.0.0", 2), channel="beta")
    t = published_target(world, "2.0.0")
    # The mirror rewrites only the check reply: the beta release, and beta's timestamp.
    world.mirror.answer(
        "/v1/device/check",
        200,
        json.dumps(
            {
                "update": True,
                "target": t.to_dict(),
                "timestamp": "timestamp/beta.mpst",
                "root_version": 1,
            }
        ).encode(),
    )
    refused(world, device, "this device follows channel stable")
    # Or it serves beta's timestamp (signed by the real server) where stable's should be.
    world.mirror.answer("/v1/device/check", 200, offer_json(t.to_dict()))

    def beta_instead(_path: str, headers: dict[str, str]) -> tuple:
        r = world.mirror.client.get(
            "/v1/timestamp/beta.mpst", headers={"Authorization": headers["Authorization"]}
        )
        assert r.status_code == 200, r.text
        return 200, r.content

    world.mirror.rules["/v1/timestamp/stable.mpst"] = beta_instead
    refused(world, device, "timestamp is for channel beta")


def test_mirror_offers_paused_release_refused(world: World, device) -> None:
    rid = world.publish(world.release("2.0.0", 2))
    assert world.admin().post(f"/v1/admin/releases/{rid}/pause").status_code == 200
    t = published_target(world, "2.0.0")
    world.mirror.answer("/v1/device/check", 200, offer_json(t.to_dict()))
    refused(world, device, "offers no release for this board")


def test_mirror_offers_same_counter_older_version_after_halt_refused(world: World, device) -> None:
    """2.0.0 is halted after this device took it; the timestamp names 1.9.0 again (same
    security counter). The server does not offer it; a mirror does: a downgrade."""
    from mpseal.fleet.registry import Registry
    from mpseal.fleet.releasestore import ReleaseStore

    world.publish(world.release("1.9.0", 2))
    world.publish(world.release("2.0.0", 2))
    assert world.ota(device) == {"result": "staged"}
    assert runs(device) == "2.0.0"
    store = ReleaseStore(Registry.open(world.db_url))
    assert store.halt(release_id(world, "2.0.0"), "test: too many failures")
    store.close()
    # Any rollout change re-signs the channel's timestamp (resuming the active 1.9.0).
    assert (
        world.admin().post(f"/v1/admin/releases/{release_id(world, '1.9.0')}/resume").status_code
        == 200
    )
    assert world.ota(device) == {"result": "none"}  # the real server offers nothing
    t = published_target(world, "1.9.0")
    world.mirror.answer("/v1/device/check", 200, offer_json(t.to_dict()))
    refused(world, device, "downgrade refused", running="2.0.0")


# -- 4. the HTTP client has a deadline for everything -------------------------------------


def test_slowloris_headers_deadline(world: World) -> None:
    device = world.board(world.release("1.0.0", 1), config={"deadline": 4})

    def drip(head: bytes):
        def answer(h) -> None:
            try:
                h.wfile.write(head)
                h.wfile.flush()
                for _ in range(90):  # one byte a second: each read makes progress
                    h.wfile.write(b"x")
                    h.wfile.flush()
                    time.sleep(1)
            except OSError:
                pass  # the device hung up: what the test wants

        return answer

    # Headers that never end, then a JSON body that never ends.
    for head, what in (
        (b"HTTP/1.1 200 OK\r\nX-Slow: ", "headers"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n", "body"),
    ):
        world.mirror.raw["/v1/device/check"] = drip(head)
        start = time.monotonic()
        result = world.ota(device)
        took = time.monotonic() - start
        assert "deadline" in str(result.get("refused")), (what, result)
        assert took < 4 + 10 + 5, (what, took)  # deadline + one socket timeout + VM start
    assert runs(device) == "1.0.0"


# -- 5. nothing a server sends can crash the update loop ----------------------------------


def test_hostile_check_reply_does_not_crash_poll_loop(world: World, device) -> None:
    world.publish(world.release("2.0.0", 2))
    hostile = [
        b"[]",
        b'{"update": true, "target": []}',
        b'"update"',
        b"\xff\xfe{",
        b'{"update": true, "root_version": "9"}',
        b'{"update": {"x": 1}}',
        b'{"update": true, "target": {}, "timestamp": 7}',
    ]
    calls: list[int] = []

    def rule(_p: str, _h: dict) -> tuple | None:
        calls.append(1)
        return (200, hostile[len(calls) - 1]) if len(calls) <= len(hostile) else None

    def no_space(h) -> None:  # a status line without a space, once
        h.wfile.write(b"HTTP/1.1200OK\r\nContent-Length: 2\r\n\r\n{}")
        world.mirror.raw.pop("/v1/device/check")

    world.mirror.raw["/v1/device/check"] = no_space
    world.mirror.rules["/v1/device/check"] = rule
    res = device.command("ota", "poll", "1", "1", "3600", timeout=240)
    assert res.replies() and res.replies()[-1] == {"result": "staged"}, res.stdout + res.stderr
    assert len(calls) == len(hostile) + 1  # every hostile reply survived, then the real one
    log = guard_log(device)
    assert any("malformed status line" in ln for ln in log), log
    assert sum("update refused" in ln or "update check failed" in ln for ln in log) >= 8
    assert runs(device) == "2.0.0"


# -- 6. reports are delivered ---------------------------------------------------------------


def test_report_lost_to_a_failing_server_is_queued_and_delivered_later(
    world: World, device
) -> None:
    world.publish(world.release("2.0.0", 2))
    world.mirror.answer("/v1/device/report", 503, b"busy")
    assert world.ota(device) == {"result": "staged"}
    queued = json.loads(device.get("/mpseal/reports.json"))
    assert [r["event"] for r in queued] == ["staged"]
    assert queued[0] | {"app": "hello", "board": "unix", "channel": "stable"} == queued[0]
    world.mirror.rules.pop("/v1/device/report")
    # The trial boot: the app's report_boot() sends the queue, then booted and confirmed.
    assert runs(device) == "2.0.0"
    answers = [
        (json.loads(b))
        for p, s, b in world.mirror.upstream_answers
        if p == "/v1/device/report" and s == 200
    ]
    events = [r["event"] for r in reports_sent(world)]
    assert events[-3:] == ["staged", "booted", "confirmed"], events
    assert len(answers) == 3 and all(a["recorded"] is True for a in answers)
    assert "reports.json" not in [n for n, _, _ in device.listdir("/mpseal")]


def test_refused_report_reaches_the_server(world: World, device) -> None:
    newer = world.release("2.0.0", 2)
    t = target_for(newer, board="esp32")
    serve_offer(world, newer, stolen_timestamp(world, (t,)), t.to_dict())
    refused(world, device, "no release for this board")
    sent = [r for r in reports_sent(world) if r["event"] == "refused"]
    assert sent and sent[-1]["version"] == "" and sent[-1]["channel"] == "stable"
    ok = [s for p, s, _ in world.mirror.upstream_answers if p == "/v1/device/report"]
    assert ok and ok[-1] == 200, world.mirror.upstream_answers[-3:]
    assert "reports.json" not in [n for n, _, _ in device.listdir("/mpseal")]


# -- 11.8 cheap device traffic -------------------------------------------------------------


def test_one_tls_connection_per_update_round(world: World, device) -> None:
    world.publish(world.release("2.0.0", 2))
    before, seen = world.mirror.connections, len(world.mirror.seen)
    assert world.ota(device) == {"result": "staged"}
    asked = [s.split(" ")[1] for s in world.mirror.seen[seen:]]
    assert [a.split("/")[2] for a in asked[:4]] == ["device", "timestamp", "artifacts", "device"], (
        asked
    )
    assert asked[0] == "/v1/device/check" and asked[3] == "/v1/device/report", asked
    assert set(asked[4:]) <= {"/v1/device/logs", "/v1/device/report"}, asked  # then logs
    assert world.mirror.connections - before == 1


def test_server_retry_after_is_honoured(world: World, device) -> None:
    world.publish(world.release("2.0.0", 2))
    calls: list[float] = []

    def busy(_p: str, _h: dict) -> tuple | None:
        calls.append(time.monotonic())
        return (503, b"busy", {"Retry-After": "5"}) if len(calls) < 2 else None

    world.mirror.rules["/v1/device/check"] = busy
    res = device.command("ota", "poll", "1", "2", "3600", timeout=120)
    assert res.replies()[-1] == {"result": "staged"}, res.stdout + res.stderr
    assert len(calls) == 2 and calls[1] - calls[0] >= 4.9  # not the 1-2 s back-off


# -- 2 and 7: what a T0 owner with write access to the filesystem can do ------------------


def test_cross_product_artifact_copied_onto_the_filesystem_refused(world: World, device) -> None:
    """The guard itself refuses another product's release (same release key), whoever
    hands it over: here a user copying the file and staging it."""
    device.put(other_product(world, "9.0.0", 50), "/mpseal/incoming.mpseal")
    res = device.command("stage", "/mpseal/incoming.mpseal")
    assert "another product refused" in str(res.replies()[-1].get("refused")), res.stdout
    assert runs(device) == "1.0.0"


def test_device_json_edited_to_dev_does_not_open_the_repl(world: World, device) -> None:
    """device.json is not signed: it may make the profile stricter, never looser than the
    signed profile of the release (this one: field)."""
    cfg = json.loads(device.get("/mpseal/device.json"))
    device.put(json.dumps(cfg | {"profile": "dev"}).encode(), "/mpseal/device.json")
    report = device.boot()
    assert [r[1] for r in report.ran()] == ["1.0.0"], report.output
    assert not any("REPL" in ln for ln in report.guard_lines), report.guard_lines
    assert any("lockdown field" in ln for ln in report.guard_lines), report.guard_lines


def test_module_on_the_flash_root_does_not_shadow_the_guards(world: World, device) -> None:
    """'' (the flash's root) is first on sys.path at power-up: a /p256.py would be imported
    by the guard in place of its own, unless the path is set before any import."""
    device.put(b"print('SHADOWED')\nraise SystemExit(0)\n", "/p256.py")
    report = device.boot()
    assert "SHADOWED" not in report.output
    assert [r[1] for r in report.ran()] == ["1.0.0"], report.output


# -- 8. sealed secrets: the key material is not on the medium that holds them ---------------


def test_filesystem_dump_does_not_hold_the_key_to_the_sealed_secrets(world: World, device) -> None:
    """A copy of the whole filesystem (the attacker of docs/provisioning.md: a flash dump, a
    copied SD card or USB drive) holds no hardware id, so it cannot open secrets.bin. The
    virtual board keeps its stand-in for the chip's machine.unique_id() in /mpseal/sim-id:
    that one file plays the silicon and is left out of the dump."""
    from mpseal.crypto import secretbox
    from mpseal.errors import MpsealError

    def walk(folder: str) -> list[str]:
        out = []
        for name, is_dir, _ in device.listdir(folder):
            path = f"{folder.rstrip('/')}/{name}"
            out += walk(path) if is_dir else [path]
        return out

    dump = {p: device.get(p) for p in walk("/") if p != "/mpseal/sim-id"}
    assert "/mpseal/secrets.bin" in dump and "/mpseal/config.json" in dump
    hw = device.hardware_id
    assert not [
        p
        for p, data in dump.items()
        if hw.encode() in data or hw.upper().encode() in data or bytes.fromhex(hw) in data
    ]
    # Nothing in the dump that looks like an id opens the secrets (and the real id does).
    candidates = {
        w for data in dump.values() for w in data.replace(b'"', b" ").split() if 8 <= len(w) <= 64
    }
    for c in candidates:
        with pytest.raises(MpsealError):
            secretbox.open_(dump["/mpseal/secrets.bin"], c.decode("latin-1"))
    assert json.loads(secretbox.open_(dump["/mpseal/secrets.bin"], hw))["device_token"]
