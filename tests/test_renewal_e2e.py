"""Certificates that renew themselves, end to end: virtual boards running the real device
client (MicroPython unix VM) against the real server with mutual TLS; keys born on the
boards; the boards' and the server's clocks moved forward past two renewals; the issuing
CA rotated; the server anchor rotated through the trust root; a revoked device's renewal
refused; the others still updating."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from ota_support import World, guard_log, ota_world

from mpseal.device.sim import VirtualBoard
from mpseal.fleet.registry import Registry
from mpseal.pki.ca import load_issuing_ca, rotate_issuing_ca

DAY = 86400


@dataclass
class Clock:
    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(project: Path, tmp_path: Path, clock: Clock):
    with ota_world(
        tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", project, renewal=True, clock=clock
    ) as w:
        yield w


def identity(board: VirtualBoard) -> tuple[dict[str, object], x509.Certificate]:
    try:
        ptr = json.loads(board.get("/mpseal/id/identity.json"))
    except Exception:  # noqa: BLE001 - never renewed
        ptr = {"cert": "device.der", "key": "device.key.der", "n": 0}
    return ptr, x509.load_der_x509_certificate(board.get("/mpseal/id/" + str(ptr["cert"])))


def files(board: VirtualBoard) -> list[str]:
    return sorted(name for name, _, _ in board.listdir("/mpseal/id"))


def round_at(world: World, clock: Clock, board: VirtualBoard, days: int) -> dict[str, object]:
    """One update round with the board's and the server's clocks ``days`` ahead."""
    clock.offset = timedelta(days=days)
    return world.ota(board, clock=days * DAY)


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        ca.public_key().verify(
            cert.signature,
            cert.tbs_certificate_bytes,  # type: ignore[call-arg,union-attr]
            ec.ECDSA(hashes.SHA256()),
        )
        return True
    except Exception:  # noqa: BLE001
        return False


def test_fleet_renews_rotates_and_revokes_while_updating(world: World, clock: Clock) -> None:
    v1 = world.release("1.0.0", 1)
    boards = [
        world.board(v1, config={"server": world.server_url}, keygen="device") for _ in range(2)
    ]
    reg = Registry.open(world.db_url)
    first = {b.hardware_id: identity(b)[1] for b in boards}
    for b in boards:
        assert round_at(world, clock, b, 0) == {"result": "none"}  # mutual TLS works
        assert identity(b)[0]["n"] == 0  # not due: nothing renewed

    # Renewal 1 and 2: two thirds of the lifetime past (day 21 of the provisioned 5 years
    # is not; the first renewal happens once the board's clock passes 2/3 of 5 years).
    life = first[boards[0].hardware_id]
    due_day = ((life.not_valid_after_utc - life.not_valid_before_utc) * 2 / 3).days + 1
    seen: dict[str, list[str]] = {b.hardware_id: [] for b in boards}
    for step, day in enumerate((due_day, due_day + 21)):
        for b in boards:
            assert round_at(world, clock, b, day) == {"result": "none"}, guard_log(b)[-3:]
            ptr, cert = identity(b)
            assert ptr["n"] == step + 1, guard_log(b)[-3:]
            assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30)
            assert cert.not_valid_before_utc > datetime.now(UTC) + timedelta(days=day - 1)
            # only the current pair is left on the board: the old key is gone
            assert [f for f in files(b) if f.startswith("device")] == [
                f"device-{step + 1}.der",
                f"device-{step + 1}.key.der",
            ], files(b)
            seen[b.hardware_id].append(
                hashlib.sha256(b.get("/mpseal/id/" + str(ptr["cert"]))).hexdigest()
            )
            assert any("certificate renewed" in ln for ln in guard_log(b))
    for b in boards:  # every serial recorded per device
        recorded = {c.fingerprint for c in reg.certificates(b.hardware_id)}
        assert set(seen[b.hardware_id]) <= recorded and len(recorded) == 3

    # A release reaches every board on its renewed certificate.
    world.publish(world.release("1.1.0", 2))
    day = due_day + 30
    for b in boards:
        assert round_at(world, clock, b, day) == {"result": "staged"}, guard_log(b)[-3:]
        assert [r[1] for r in b.boot().ran()] == ["1.1.0"]

    # Rotate the issuing CA: renewals are signed by the new one (the server picks it up);
    # the server's TLS learns the new chain (as after a restart with the new ca-chain.pem).
    old_ca = load_issuing_ca(world.ca_dir).cert
    rotate_issuing_ca(world.ca_dir)
    new_ca = load_issuing_ca(world.ca_dir).cert
    assert world.server_ssl is not None
    world.server_ssl.load_verify_locations(cafile=str(world.ca_dir / "ca-chain.pem"))
    day = due_day + 42
    for b in boards:
        assert round_at(world, clock, b, day) == {"result": "none"}, guard_log(b)[-3:]
        ptr, cert = identity(b)
        assert ptr["n"] == 3 and issued_by(cert, new_ca) and not issued_by(cert, old_ca)

    # Rotate the server anchor: trust root 2 names the old and the new anchor, every board
    # takes it; the server moves to a certificate under the new anchor; root 3 names only
    # the new one. No board is reflashed.
    from test_server_anchor import _server_cert_under

    from mpseal.packaging.keys import set_tls_anchors
    from mpseal.pki.ca import CaOptions, init_ca

    a_root = (world.ca_dir / "root.der").read_bytes()
    b_dir = world.tmp / "ca-b"
    init_ca(b_dir, CaOptions(name="the new server CA"))
    b_root = (b_dir / "root.der").read_bytes()
    set_tls_anchors(world.proj, [a_root, b_root])
    for b in boards:
        assert round_at(world, clock, b, day) == {"result": "none"}, guard_log(b)[-3:]
    world.server_ssl.load_cert_chain(*map(str, _server_cert_under(b_dir, world.tmp)))
    both = world.ca_dir / "root.pem"  # the admin client trusts both server CAs
    both.write_bytes(both.read_bytes() + (b_dir / "root.pem").read_bytes())
    set_tls_anchors(world.proj, [b_root])
    for b in boards:
        assert round_at(world, clock, b, day) == {"result": "none"}, guard_log(b)[-3:]
        assert b.command("meta", "anchors").replies()[-1] == [b_root.hex()]
        assert b.get("/mpseal/id/server-anchor.der") == a_root  # never reflashed

    # Revoke one device: its renewal (and its updates) refused; the other carries on.
    bad, good = boards
    reg.revoke_device(bad.hardware_id, "stolen")
    world.publish(world.release("1.2.0", 3))
    day = due_day + 63
    result = round_at(world, clock, bad, day)
    assert "failed" in result and "403" in str(result["failed"]), result
    assert identity(bad)[0]["n"] == 3  # kept its (server-refused) pair; nothing half-written
    assert any("certificate renewal failed" in ln and "403" in ln for ln in guard_log(bad))
    assert any(e.kind == "renewal_refused" for e in reg.events(bad.hardware_id))
    assert round_at(world, clock, good, day) == {"result": "staged"}, guard_log(good)[-3:]
    assert identity(good)[0]["n"] == 4
    assert [r[1] for r in good.boot().ran()] == ["1.2.0"]


@pytest.mark.parametrize("tear", [False, True], ids=["cut", "torn"])
def test_power_cut_at_every_write_of_a_renewal(world: World, clock: Clock, tear: bool) -> None:
    """The flash loses power at write N of a renewal round (``torn``: that write stops
    half-way), for every N: the board then
    still does mutual TLS with a pair that works (old or new), and the next round
    finishes the renewal, leaving only the current pair on the board."""
    board = world.board(
        world.release("1.0.0", 1), config={"server": world.server_url}, keygen="device"
    )
    life = identity(board)[1]
    day = ((life.not_valid_after_utc - life.not_valid_before_utc) * 2 / 3).days + 1
    clock.offset = timedelta(days=day)
    before = board.flash.read_bytes()
    cuts = 0
    for n in range(1, 400):
        board.flash.write_bytes(before)
        res = board.command("ota", "clock", str(day * DAY), cut=n, tear=tear, timeout=300)
        if "PowerCut" not in res.stdout + res.stderr:
            assert res.replies()[-1] == {"result": "none"}, res.stdout[-500:]
            break  # the whole round fitted in n - 1 writes
        cuts += 1
        after = world.ota(board, clock=day * DAY)  # power back: the next round
        assert after == {"result": "none"}, (n, after, guard_log(board)[-3:])
        ptr, cert = identity(board)
        assert ptr["n"] == 1, (n, guard_log(board)[-3:])
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30)
        assert [f for f in files(board) if f.startswith("device")] == [
            "device-1.der",
            "device-1.key.der",
        ], (n, files(board))
    else:
        pytest.fail("the renewal round never finished")
    assert cuts >= 10, cuts  # the renewal's writes were all cut at least once
    print(
        f"renewal power-cut test: {cuts} cut points tried, {cuts} survived; the whole "
        f"round took {n - 1} block writes"
    )


def test_board_whose_certificate_expired_recovers(world: World, clock: Clock) -> None:
    """Off longer than its certificate lived: the board connects with its bearer token only,
    signs the server's challenge with its expired key, and gets a new certificate."""
    board = world.board(
        world.release("1.0.0", 1), config={"server": world.server_url}, keygen="device"
    )
    life = identity(board)[1]
    day = ((life.not_valid_after_utc - life.not_valid_before_utc) * 2 / 3).days + 1
    assert round_at(world, clock, board, day) == {"result": "none"}
    assert identity(board)[0]["n"] == 1  # a 30-day certificate now
    day += 45  # off for 45 days: expired 15 days ago
    assert round_at(world, clock, board, day) == {"result": "none"}, guard_log(board)[-3:]
    ptr, cert = identity(board)
    assert ptr["n"] == 2 and any("certificate recovered" in ln for ln in guard_log(board))
    assert cert.not_valid_after_utc > datetime.now(UTC) + timedelta(days=day + 29)
    assert [
        e.kind
        for e in Registry.open(world.db_url).events(board.hardware_id)
        if e.kind in ("renewed", "recovered")
    ] == ["renewed", "recovered"]
    # and the recovered certificate works for mutual TLS
    assert round_at(world, clock, board, day) == {"result": "none"}
    assert identity(board)[0]["n"] == 2
