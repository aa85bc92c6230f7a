"""The update server's TLS anchor carried in the trust root (issue 13 item 3): one format,
parsed by the host (formats/trustroot.py) and the device (runtime/mpseal_release.py) from
the same bytes; and a fleet of virtual boards following a server certificate change
under a new anchor, through a root rotation, without reflashing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from key_support import Keys
from ota_support import World, guard_log, ota_world
from test_runtime_meta import make_board, meta

from mpseal.errors import FormatError
from mpseal.formats import envelope, jsondoc, trustroot
from mpseal.packaging.keys import set_tls_anchors
from mpseal.pki.ca import CaOptions, init_ca, load_issuing_ca
from mpseal.pki.certs import LeafRequest, generate_key, issue, key_pem_der


def _root_with(keys: Keys, anchors: list[str]) -> bytes:
    """Trust root 2 whose payload names ``anchors`` as given (hex strings, even bad ones)."""
    doc = json.loads(
        trustroot.build(
            2, {n: [keys.trust.keys[k] for k in r.keyids] for n, r in keys.trust.roles.items()}
        ).payload()
    )
    doc["tls_anchors"] = anchors
    return envelope.seal(trustroot.MAGIC, jsondoc.dumps(doc), [keys.root]).encode()


def test_host_and_device_read_the_same_anchors(tmp_path: Path) -> None:
    keys = Keys()
    ca = init_ca(tmp_path / "ca", CaOptions(name="anchor test"))
    der = ca.root.public_bytes(Encoding.DER)
    other = ca.issuing.public_bytes(Encoding.DER)
    data = _root_with(keys, [der.hex(), other.hex()])
    assert trustroot.parse(data).tls_anchors == (der, other)  # the host
    board = make_board(tmp_path, keys.trust)
    board.put(data, "/mpseal/roots/2.mpsr")
    assert meta(board, "roots", "/mpseal/roots/2.mpsr") == {"root_version": 2}
    assert meta(board, "anchors") == [der.hex(), other.hex()]  # the device, same bytes
    # a root without anchors keeps its exact bytes (older roots and devices unchanged)
    assert b"tls_anchors" not in keys.trust.raw


@pytest.mark.parametrize(
    "bad", [["zz"], ["3000ff"], ["30"], [], ["AB" * 8], ["3003020101"] * 5, [7]]
)
def test_malformed_anchor_refused_by_host_and_device(tmp_path: Path, bad: list) -> None:
    keys = Keys()
    data = _root_with(keys, bad)
    with pytest.raises(FormatError):
        trustroot.parse(data)
    board = make_board(tmp_path, keys.trust)
    board.put(data, "/mpseal/roots/2.mpsr")
    assert "refused" in meta(board, "roots", "/mpseal/roots/2.mpsr")
    assert board.get("/mpseal/trust-root.mpsr") == keys.trust.raw


@pytest.fixture
def world(project: Path, tmp_path: Path):
    with ota_world(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", project) as w:
        yield w


def _server_cert_under(ca_dir: Path, out: Path) -> tuple[Path, Path]:
    ca = load_issuing_ca(ca_dir)
    key = generate_key()
    cert = issue(
        ca, LeafRequest(name="127.0.0.1", role="server", sans=("IP:127.0.0.1",)), key.public_key()
    )
    c, k = out / "server-b.pem", out / "server-b-key.pem"
    c.write_bytes(cert.public_bytes(Encoding.PEM) + ca.cert.public_bytes(Encoding.PEM))
    k.write_bytes(key_pem_der(key)[0])
    return c, k


def test_fleet_follows_a_server_anchor_change_without_reflashing(
    world: World, tmp_path: Path
) -> None:
    a_root = (world.ca_dir / "root.der").read_bytes()
    direct = {"server": world.server_url}
    v1 = world.release("1.0.0", 1)
    follower, sleeper = world.board(v1, config=direct), world.board(v1, config=direct)
    for b in (follower, sleeper):
        assert world.ota(b) == {"result": "none"}

    # Step 1: trust root 2 names the old and the new anchor; the follower takes it.
    b_dir = tmp_path / "ca-b"
    init_ca(b_dir, CaOptions(name="the new server CA"))
    b_root = (b_dir / "root.der").read_bytes()
    set_tls_anchors(world.proj, [a_root, b_root])
    assert world.ota(follower) == {"result": "none"}, guard_log(follower)[-3:]
    assert meta(follower, "anchors") == [a_root.hex(), b_root.hex()]

    # Step 2: the server switches to a certificate under the new anchor.
    assert world.server_ssl is not None
    world.server_ssl.load_cert_chain(*map(str, _server_cert_under(b_dir, tmp_path)))
    both = world.ca_dir / "root.pem"  # the operator's admin client trusts both CAs
    both.write_bytes(both.read_bytes() + (b_dir / "root.pem").read_bytes())
    world.publish(world.release("1.1.0", 2))
    assert world.ota(follower) == {"result": "staged"}, guard_log(follower)[-3:]
    assert [r[1] for r in follower.boot().ran()] == ["1.1.0"]
    # its provisioned anchor file was never touched: the root's anchors are what it pins
    assert follower.get("/mpseal/id/server-anchor.der") == a_root
    # A device offline through the whole overlap pins only the old anchor: it cannot
    # follow (it must be reached while the old certificate is still served).
    stuck = world.ota(sleeper)
    assert "failed" in stuck, stuck

    # Step 3: root 3 names only the new anchor; the follower keeps updating.
    set_tls_anchors(world.proj, [b_root])
    world.publish(world.release("1.2.0", 3))
    assert world.ota(follower) == {"result": "staged"}, guard_log(follower)[-3:]
    assert meta(follower, "anchors") == [b_root.hex()]
    assert [r[1] for r in follower.boot().ran()] == ["1.2.0"]


def test_keys_anchor_cli_and_later_rotations_keep_the_anchors(
    project: Path, tmp_path: Path
) -> None:
    import hashlib

    from conftest import run_mpseal

    from mpseal.packaging.project import Project

    ca = init_ca(tmp_path / "ca", CaOptions(name="anchor cli"))
    der = ca.root.public_bytes(Encoding.DER)
    res = run_mpseal(
        "keys", "anchor", "-C", project, "--tls-anchor", tmp_path / "ca" / "root.pem", "--json"
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["version"] == 2 and out["tls_anchors"] == [hashlib.sha256(der).hexdigest()]
    assert Project.load(project).trust_root().tls_anchors == (der,)
    # a chain file is not one anchor: usage error, nothing written
    res = run_mpseal(
        "keys", "anchor", "-C", project, "--tls-anchor", tmp_path / "ca" / "ca-chain.pem"
    )
    assert res.returncode == 2 and "one certificate" in res.stderr
    assert Project.load(project).trust_root().version == 2
    # a key rotation carries the anchors into the next root
    assert run_mpseal("keys", "add", "-C", project, "--role", "release").returncode == 0
    root = Project.load(project).trust_root()
    assert root.version == 3 and root.tls_anchors == (der,)
