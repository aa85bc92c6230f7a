"""Over-the-air updates end to end: the real device client in the MicroPython VM, the real
server on loopback (TLS), and an attacker in between. One test per attack; each ends with
the device still running a valid image and the reason in its log."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
from ota_support import World, guard_log, offer_json, ota_world

from mpseal.formats import updatemeta


@pytest.fixture
def world(project: Path, tmp_path: Path):
    with ota_world(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", project) as w:
        yield w


def runs(board) -> str:
    ran = board.boot().ran()
    return ran[-1][1] if ran else ""


def test_update_through_the_server_commits_after_the_health_check(world: World) -> None:
    v1 = world.release("1.0.0", 1)
    board = world.board(v1)
    world.publish(world.release("2.0.0", 2))
    assert world.ota(board) == {"result": "staged"}
    report = board.boot()
    assert [r[1] for r in report.ran()] == ["2.0.0"]
    assert any(ln.startswith("committed hello 2.0.0") for ln in report.guard_lines)
    assert world.ota(board) == {"result": "none"}  # nothing newer: nothing to do


def refused(world: World, board, reason: str, running: str = "1.0.0") -> None:
    """The attack fails: the reason is logged, the device keeps running a valid image."""
    result = world.ota(board)
    assert set(result) == {"refused"} and reason in str(result["refused"]), result
    assert any(reason in ln for ln in guard_log(board)), guard_log(board)[-3:]
    assert runs(board) == running


@pytest.fixture
def device(world: World):
    return world.board(world.release("1.0.0", 1))


def target_for(blob: bytes, path: str = "artifacts/evil.mpseal", **change: object):
    t = updatemeta.Target.for_artifact(blob, path)
    return updatemeta.Target(**{**t.__dict__, **change}) if change else t


def test_arbitrary_install_signed_by_another_key(world: World, device, tmp_path: Path) -> None:
    """Even a stolen timestamp key cannot make the device run code the release key did not sign."""
    from conftest import run_mpseal
    from ota_support import serve_offer, stolen_timestamp

    other = tmp_path / "attacker"
    assert run_mpseal("init", other, "--board", "unix", "--name", "hello").returncode == 0
    assert run_mpseal("build", "-C", other).returncode == 0
    evil = next((other / "dist").glob("*.mpseal")).read_bytes()
    t = target_for(evil, counter=5)
    serve_offer(world, evil, stolen_timestamp(world, (t,)), t.to_dict())
    refused(world, device, "signed by an unknown key")


def test_arbitrary_install_with_a_forged_signature(world: World, device) -> None:
    from ota_support import serve_offer, stolen_timestamp

    blob = bytearray(world.release("6.6.6", 6))
    mlen = int.from_bytes(blob[12:16], "little")
    sig = 32 + mlen + 32  # r || s of the only signature: zeroed
    blob[sig : sig + 64] = bytes(64)
    t = target_for(bytes(blob))
    serve_offer(world, bytes(blob), stolen_timestamp(world, (t,)), t.to_dict())
    refused(world, device, "does not verify")


def test_rollback_to_an_older_signed_release(world: World, device) -> None:
    from ota_support import serve_offer, stolen_timestamp

    old = world.release("0.9.0", 0)  # validly signed, but below the device's counter
    t = target_for(old)
    serve_offer(world, old, stolen_timestamp(world, (t,)), t.to_dict())
    refused(world, device, "rollback refused")


def test_freeze_with_an_expired_timestamp(world: World, device) -> None:
    from ota_support import serve_offer, stolen_timestamp

    newer = world.release("2.0.0", 2)
    t = target_for(newer)
    expired = stolen_timestamp(world, (t,), issued=int(time.time()) - 7200, expires_in=3600)
    serve_offer(world, newer, expired, t.to_dict())
    refused(world, device, "expired")


def test_replay_of_an_older_timestamp(world: World, device) -> None:
    from ota_support import serve_offer, stolen_timestamp

    newer = world.release("2.0.0", 2)
    t = target_for(newer)
    serve_offer(world, newer, stolen_timestamp(world, (), version=50), t.to_dict())
    world.ota(device)  # the device now knows version 50 (nothing for it in it)
    serve_offer(world, newer, stolen_timestamp(world, (t,), version=40), t.to_dict())
    refused(world, device, "older")


def test_mix_and_match_of_two_releases(world: World, device) -> None:
    """The timestamp names release 2.0.0; the mirror serves 3.0.0 (also validly signed)."""

    world.publish(world.release("2.0.0", 2))
    v3 = world.release("3.0.0", 2)
    offer = world.admin().get("/v1/admin/releases").json()["releases"][0]
    path = "/v1/artifacts/" + offer["file_sha256"] + ".mpseal"
    assert len(v3) == offer["size"]  # same size: only the manifest hash can tell
    world.mirror.answer(path, 200, v3)
    refused(world, device, "mix-and-match")


def test_endless_data_oversized_timestamp_and_artifact(world: World, device) -> None:
    from ota_support import serve_offer, stolen_timestamp

    newer = world.release("2.0.0", 2)
    t = target_for(newer)
    serve_offer(world, newer + os.urandom(100_000), stolen_timestamp(world, (t,)), t.to_dict())
    refused(world, device, "over the")
    world.mirror.answer("/v1/timestamp/stable.mpst", 200, os.urandom(64 * 1024))
    refused(world, device, "over the 8192-byte limit")


def test_wrong_board(world: World, device) -> None:
    from ota_support import serve_offer, stolen_timestamp

    newer = world.release("2.0.0", 2)
    t = target_for(newer, board="esp32")
    serve_offer(world, newer, stolen_timestamp(world, (t,)), t.to_dict())
    refused(world, device, "no release for this board")


def test_slow_retrieval_is_cut_off(world: World, device) -> None:
    from ota_support import serve_offer, stolen_timestamp

    newer = world.release("2.0.0", 2)
    t = target_for(newer)
    serve_offer(world, newer, stolen_timestamp(world, (t,)), t.to_dict())
    world.mirror.trickle["/v1/" + t.path] = 100  # bytes per second
    refused(world, device, "slow retrieval")


def test_hostile_names_in_metadata(world: World, device) -> None:
    import json

    from mpseal.formats import envelope, jsondoc

    newer = world.release("2.0.0", 2)
    t = target_for(newer).to_dict()
    for bad in ("../../mpseal/trust-root.mpsr", "/etc/passwd", "artifacts/../x"):
        t["path"] = bad
        now = int(time.time())
        payload = jsondoc.dumps(
            {
                "type": "mpseal-timestamp",
                "spec": 1,
                "version": 10**6,
                "channel": "stable",
                "issued": now,
                "expires": now + 3600,
                "root_version": world.proj.trust_root().version,
                "targets": [t],
            }
        )
        ts = envelope.seal(b"MPST", payload, [world.proj.timestamp_signer()]).encode()
        world.mirror.answer(
            "/v1/device/check",
            200,
            json.dumps(
                {"update": True, "target": t, "timestamp": "timestamp/stable.mpst"}
            ).encode(),
        )
        world.mirror.answer("/v1/timestamp/stable.mpst", 200, ts)
        refused(world, device, "path")
    world.mirror.answer(
        "/v1/device/check",
        200,
        json.dumps({"update": True, "target": t, "timestamp": "../../etc/x"}).encode(),
    )
    refused(world, device, "path")


def test_server_pushing_an_old_signed_release_is_refused_by_the_device(
    world: World, device
) -> None:
    """The real server, told to offer an older release, cannot make the device take it."""
    world.publish(world.release("2.0.0", 2))
    assert world.ota(device) == {"result": "staged"}
    assert runs(device) == "2.0.0"
    from ota_support import serve_offer, stolen_timestamp

    old = world.release("1.5.0", 1)
    t = target_for(old)
    serve_offer(world, old, stolen_timestamp(world, (t,)), t.to_dict())
    refused(world, device, "rollback refused", running="2.0.0")


def test_fast_forward_through_two_key_rotations(world: World, device) -> None:
    """The timestamp key is rotated twice (trust roots 2 and 3, each signed by the old and
    new root keys). The device, still on root 1, fetches 2 and 3 and accepts the new key;
    a timestamp by the retired key is refused afterwards."""
    from conftest import run_mpseal
    from ota_support import stolen_timestamp

    old_key_ts = None
    world.publish(world.release("2.0.0", 2))
    offer = world.admin().get("/v1/admin/releases").json()["releases"][0]
    for _ in range(2):
        res = run_mpseal("keys", "rotate", "--role", "timestamp", "-C", world.project)
        assert res.returncode == 0, res.stderr
    assert world.proj.trust_root().version == 3
    blob = next(p for p in (world.project / "dist").glob("*2.0.0*.mpseal")).read_bytes()
    t = target_for(blob, path=f"artifacts/{offer['file_sha256']}.mpseal")
    # The server restarts with the new key; here the mirror stands in for it (check and
    # timestamp), while the new trust roots come from the real server's /v1/roots/.
    world.mirror.answer(
        "/v1/timestamp/stable.mpst", 200, stolen_timestamp(world, (t,), version=10**6)
    )  # by the NEW key
    world.mirror.answer(
        "/v1/device/check", 200, __import__("ota_support").offer_json(t.to_dict(), 3)
    )
    assert world.ota(device) == {"result": "staged"}
    assert {"GET /v1/roots/2.mpsr", "GET /v1/roots/3.mpsr"} <= set(world.mirror.seen)
    assert runs(device) == "2.0.0"
    # The retired timestamp key (held by an attacker now) no longer counts.
    import mpseal.formats.updatemeta as um
    from mpseal.crypto.keys import PrivateKeySigner

    retired = sorted((world.project / "keys" / "retired").glob("*.pem"))
    assert retired
    old = PrivateKeySigner.from_pem(retired[0].read_bytes())
    now = int(time.time())
    old_key_ts = um.sign_timestamp(um.Timestamp(10**7, now, now + 3600, 3, (t,)), [old])
    world.mirror.answer("/v1/timestamp/stable.mpst", 200, old_key_ts)
    world.mirror.answer(
        "/v1/device/check", 200, __import__("ota_support").offer_json(t.to_dict(), 3)
    )
    refused(world, device, "unknown key", running="2.0.0")


def test_below_threshold_release_signature(world: World) -> None:
    """A fleet whose releases need two release keys: a build signed by one is refused,
    even when a stolen timestamp key offers it."""
    import dataclasses

    from conftest import run_mpseal
    from ota_support import serve_offer, stolen_timestamp

    from mpseal.crypto.keys import PrivateKeySigner
    from mpseal.formats import artifact as art_mod

    base = art_mod.decode(world.release("1.0.0", 1))  # the image, built before the change
    man = art_mod.manifest_mod.parse(base.manifest_bytes)
    res = run_mpseal("keys", "add", "--role", "release", "--threshold", "2", "-C", world.project)
    assert res.returncode == 0, res.stderr
    keys = [
        PrivateKeySigner.from_pem(p.read_bytes())
        for p in sorted((world.project / "keys").glob("release*.pem"))
    ]
    assert len(keys) == 2
    # `mpseal build` refuses to make a release the trust root would not accept...
    res = run_mpseal("build", "-C", world.project)
    assert res.returncode == 2 and "1 valid release signatures, the threshold is 2" in res.stderr

    # ...so the 2-of-2 releases are signed with both keys (a signing ceremony).
    def signed(version: str, counter: int, signers) -> bytes:
        m = dataclasses.replace(man, version=version, counter=counter)
        return art_mod.create(m, base.image, signers).encode()

    device = world.board(signed("1.0.0", 1, keys))
    assert runs(device) == "1.0.0"
    one_sig = signed("2.0.0", 2, keys[:1])
    t = target_for(one_sig)
    serve_offer(world, one_sig, stolen_timestamp(world, (t,)), t.to_dict())
    refused(world, device, "1 of 2 release signatures")
    # With both signatures the same release is taken.
    two = signed("2.0.0", 2, keys)
    t = target_for(two)
    serve_offer(world, two, stolen_timestamp(world, (t,)), t.to_dict())
    assert world.ota(device) == {"result": "staged"}
    assert runs(device) == "2.0.0"


def test_a_trust_root_that_would_orphan_the_running_release_is_refused(
    world: World, device
) -> None:
    """Raising the release threshold while devices run a one-key release would leave them
    nothing to boot: the device refuses the new root until a release signed for it exists."""
    from conftest import run_mpseal

    world.publish(world.release("2.0.0", 2))
    offer = world.admin().get("/v1/admin/releases").json()["releases"][0]
    res = run_mpseal("keys", "add", "--role", "release", "--threshold", "2", "-C", world.project)
    assert res.returncode == 0, res.stderr
    blob = next((world.project / "dist").glob("*2.0.0*.mpseal")).read_bytes()
    t = target_for(blob, path=f"artifacts/{offer['file_sha256']}.mpseal")
    world.mirror.answer("/v1/device/check", 200, offer_json(t.to_dict(), 2))
    refused(world, device, "would not run under trust root 2")


def test_the_client_backs_off_and_retries_until_the_server_answers(world: World, device) -> None:
    world.publish(world.release("2.0.0", 2))
    calls = []

    def flaky(path: str, headers: dict) -> tuple[int, bytes] | None:
        calls.append(time.monotonic())
        return (503, b"busy") if len(calls) < 3 else None  # then forwarded to the server

    world.mirror.rules["/v1/device/check"] = flaky
    res = device.command("ota", "poll", "1", "4", timeout=120)
    assert res.replies()[-1] == {"result": "staged"}, res.stdout + res.stderr
    assert len(calls) == 3
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9  # back-off: 1-2 s, then 2-4 s (jitter)
    assert any("update check failed" in ln for ln in guard_log(device))
    assert runs(device) == "2.0.0"


def test_sim_update_cli(world: World, device) -> None:
    from conftest import run_mpseal

    world.publish(world.release("2.0.0", 2))
    res = run_mpseal("sim", "update", "--sim", device.folder, "--json")
    assert res.returncode == 0, res.stderr
    assert '"result": "staged"' in res.stdout
    assert runs(device) == "2.0.0"


def test_wrong_device_a_release_for_another_product(world: World, device) -> None:
    from ota_support import serve_offer, stolen_timestamp

    newer = world.release("2.0.0", 2)
    t = target_for(newer, app="someone-elses-product")
    serve_offer(world, newer, stolen_timestamp(world, (t,)), t.to_dict())
    refused(world, device, "no release for this board")


def test_a_revoked_device_is_refused_by_the_server(world: World, device) -> None:
    world.publish(world.release("2.0.0", 2))
    with world.admin() as admin:
        r = admin.post(f"/v1/admin/devices/{device.hardware_id}/revoke", json={"reason": "stolen"})
        assert r.status_code == 200, r.text
    time.sleep(0.3)  # the server's device cache (0.1 s here) bounds how late revocation bites
    result = world.ota(device)
    assert "403" in str(result.get("failed")), result
    assert runs(device) == "1.0.0"
