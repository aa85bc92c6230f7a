"""``mpseal ca rotate``: a new issuing CA under the same root, without touching devices.

Proved with real handshakes: the device (MicroPython unix port, mbedTLS) keeps its old
root anchor and accepts a server certificate from the new issuing CA; the server
(Python ssl / OpenSSL) loads the new ca-chain.pem and accepts device certificates from
both the retired and the new issuing CA. A rotation cut between its file moves is
finished by running it again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_mpseal
from pki_support import python_server, run_device

from mpseal.errors import ConfigError
from mpseal.pki import ca as ca_mod


def ok(res) -> None:  # type: ignore[no-untyped-def]
    assert res.returncode == 0, res.stderr


def issue(ca: Path, name: str, role: str, out: Path) -> None:
    args = ["cert", "issue", name, "--ca", ca, "--role", role, "--out", out]
    if role == "server":
        args += ["--san", f"DNS:{name}"]
    ok(run_mpseal(*args))


def test_rotated_issuing_ca_keeps_old_devices_and_anchors_working(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    ok(run_mpseal("ca", "init", ca, "--org", "Acme"))
    issue(ca, "device-old", "client", tmp_path / "old")
    old_key = (ca / ca_mod.ISSUING_KEY).read_bytes()

    res = run_mpseal("ca", "rotate", ca, "--json")
    ok(res)
    info = json.loads(res.stdout)
    assert info["old"]["serial"] != info["new"]["serial"]
    assert len(info["chain"]) == 3  # new issuing, retired issuing, root
    assert (ca / ca_mod.ISSUING_KEY).read_bytes() != old_key
    assert (ca / "retired" / f"issuing-{info['old']['serial']}.pem").exists()
    issue(ca, "server.test", "server", tmp_path / "new")
    issue(ca, "device-new", "client", tmp_path / "new")

    anchor = ca / "root.der"  # what devices were provisioned with, unchanged
    for device in (tmp_path / "old/device-old", tmp_path / "new/device-new"):
        with python_server(
            tmp_path / "new/server.test-chain.pem",
            tmp_path / "new/server.test.key.pem",
            ca / "ca-chain.pem",
        ) as (port, server):
            result = run_device(port, f"{device}.der", f"{device}.key.der", anchor)
        assert result.ok, (device.name, result.line)
        assert server.peer_subject == device.name  # type: ignore[attr-defined]


def test_a_server_with_only_the_new_chain_refuses_old_devices_until_it_keeps_retired(
    tmp_path: Path,
) -> None:
    """Why ca-chain.pem keeps retired issuing CAs: without them old devices are locked out."""
    ca = tmp_path / "ca"
    ok(run_mpseal("ca", "init", ca))
    issue(ca, "device-old", "client", tmp_path / "old")
    ok(run_mpseal("ca", "rotate", ca))
    issue(ca, "server.test", "server", tmp_path / "new")
    new_only = tmp_path / "new-only.pem"
    new_only.write_bytes((ca / "issuing.pem").read_bytes() + (ca / "root.pem").read_bytes())
    with python_server(
        tmp_path / "new/server.test-chain.pem", tmp_path / "new/server.test.key.pem", new_only
    ) as (port, _):
        result = run_device(
            port,
            tmp_path / "old/device-old.der",
            tmp_path / "old/device-old.key.der",
            ca / "root.der",
        )
    assert not result.ok


def test_interrupted_rotation_is_finished_by_running_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca"
    ca_mod.init_ca(ca, ca_mod.CaOptions())
    real_replace = ca_mod.os.replace

    def cut_before_the_certificate_moves(src: str, dst: str) -> None:
        if str(src).endswith("issuing.pem.next"):  # the key moved already: they mismatch
            raise OSError(5, "power lost")
        real_replace(src, dst)

    monkeypatch.setattr(ca_mod.os, "replace", cut_before_the_certificate_moves)
    with pytest.raises(OSError):
        ca_mod.rotate_issuing_ca(ca)
    monkeypatch.setattr(ca_mod.os, "replace", real_replace)
    with pytest.raises(ConfigError, match="interrupted"):
        ca_mod.load_issuing_ca(ca)
    staged = (ca / "issuing.pem.next").read_bytes()
    result = ca_mod.rotate_issuing_ca(ca)
    assert (ca / "issuing.pem").read_bytes() == staged  # finished, not a second new CA
    loaded = ca_mod.load_issuing_ca(ca)
    assert loaded.cert.serial_number == result.new.serial_number
    assert not list(ca.glob("*.next"))


def test_rotation_without_the_offline_root_key_is_one_line(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    ok(run_mpseal("ca", "init", ca))
    shutil.move(ca / ca_mod.ROOT_KEY, tmp_path / "safe-root-key.pem")
    before = (ca / ca_mod.ISSUING_KEY).read_bytes()
    res = run_mpseal("ca", "rotate", ca)
    assert res.returncode == 2, res
    assert len(res.stderr.strip().splitlines()) == 1 and "offline" in res.stderr
    assert (ca / ca_mod.ISSUING_KEY).read_bytes() == before
