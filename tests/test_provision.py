"""Factory provisioning over the real serial transport: the virtual board (MicroPython VM on
a pty) and MicroPython 1.9 firmware on a micro:bit in QEMU; interrupted at every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_mpseal
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_private_key
from serial_boards import MicrobitBoard, VirtualBoardOnPty, qemu_microbit

from mpseal.crypto import secretbox
from mpseal.fleet.provision import (
    CERT,
    KEY,
    MARKER,
    SECRETS,
    STEPS,
    ProvisionPlan,
    device_path,
    provision_device,
)
from mpseal.fleet.registry import Registry
from mpseal.packaging.project import Project
from mpseal.pki.ca import CaOptions, init_ca, load_issuing_ca

SECRETS_IN = {"wifi_ssid": "factory-net", "wifi_password": "s3cret-ö"}


class Interrupted(Exception):
    pass


@pytest.fixture
def factory(project: Path, tmp_path: Path):
    init_ca(tmp_path / "ca", CaOptions(name="test fleet"))
    proj = Project.load(project)
    registry = Registry.open(f"sqlite:///{tmp_path / 'fleet.db'}")

    def plan(**kw: object) -> ProvisionPlan:
        base = {
            "board": "unix",
            "profile": "field",
            "trust_root": proj.trust_root().raw,
            "ca": load_issuing_ca(tmp_path / "ca"),
            "config": {"server": "https://u.test"},
            "secrets": SECRETS_IN,
        }
        base.update(kw)
        return ProvisionPlan(**base)  # type: ignore[arg-type]

    return plan, registry


def device_identity_is_known(transport, registry: Registry, hw: str, flat: bool = False) -> None:
    """The key on the device belongs to the one valid certificate the registry has for it."""
    cert = x509.load_der_x509_certificate(transport.read_file(device_path(CERT, flat), 4096))
    key = load_der_private_key(transport.read_file(device_path(KEY, flat), 4096), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    valid = [c for c in registry.certificates(hw) if c.status == "valid"]
    import hashlib

    assert [c.fingerprint for c in valid] == [
        hashlib.sha256(
            cert.public_bytes(
                __import__(
                    "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
                ).Encoding.DER
            )
        ).hexdigest()
    ]


APP_USING_SECRETS = """\
import mpseal_secrets
from mpseal_guard import confirm
def main():
    cfg = mpseal_secrets.load()
    print("joining", cfg["wifi_ssid"], "with a", len(cfg["wifi_password"]), "character password")
    confirm()
"""


def test_provision_the_virtual_board_end_to_end(factory, project: Path, tmp_path: Path) -> None:
    plan, registry = factory
    (project / "app" / "main.py").write_text(APP_USING_SECRETS)
    assert run_mpseal("build", "-C", project).returncode == 0
    built = project / "dist" / "hello-1.0.0.mpseal"
    board = VirtualBoardOnPty(tmp_path / "board")
    try:
        t = board.connect()
        res = provision_device(t, plan(artifact=built.read_bytes()), registry)
        assert res.outcome == "provisioned" and res.steps == list(STEPS)
        hw = res.hardware_id
        assert registry.device(hw).state == "active"
        device_identity_is_known(t, registry, hw)
        sealed = t.read_file(SECRETS, 4096)
        assert b"s3cret" not in sealed
        opened = json.loads(secretbox.open_(sealed, hw))
        assert {k: opened[k] for k in SECRETS_IN} == SECRETS_IN
        assert registry.is_allowed(token=opened["device_token"])  # its own bearer token
        # Idempotent: a second run finds it fully provisioned and changes nothing.
        again = provision_device(t, plan(artifact=built.read_bytes()), registry)
        assert again.outcome == "skipped" and again.fingerprint == res.fingerprint
        t.close()
    finally:
        board.close()
    # The board boots its staged release through the guard it was given, and the app
    # opens the secrets sealed for this device (mpseal_secrets in the VM).
    report = board.board.boot()
    assert report.ran() and report.ran()[0][:2] == ("hello", "1.0.0")
    assert "joining factory-net with a 8 character password" in report.output


@pytest.mark.parametrize("stop_at", STEPS)
def test_interrupted_provisioning_is_cleanly_redone(
    factory, built: Path, tmp_path: Path, stop_at: str
) -> None:
    """Stopped right after each step; run again, the device ends fully provisioned."""
    plan, registry = factory
    artifact = built.read_bytes()
    board = VirtualBoardOnPty(tmp_path / "board")

    def hook(hw: str, step: str) -> None:
        if step == stop_at:
            raise Interrupted(step)

    try:
        t = board.connect()
        with pytest.raises(Interrupted):
            provision_device(t, plan(artifact=artifact), registry, on_step=hook)
        hw = t.exec("print(open('/mpseal/sim-id').read().strip())").strip()
        res = provision_device(t, plan(artifact=artifact), registry)
        # Only a run stopped after the last step had finished everything.
        assert res.outcome == ("skipped" if stop_at == "activate" else "provisioned")
        device_identity_is_known(t, registry, hw)
        assert registry.device(hw).state == "active"
    finally:
        board.close()


def test_a_cut_cable_mid_write_leaves_a_device_that_is_redone(factory, tmp_path: Path) -> None:
    plan, registry = factory
    board = VirtualBoardOnPty(tmp_path / "board")
    try:
        t = board.connect()
        real_write = t.write_file
        written = []

        def cutting_write(path: str, data: bytes, progress=None) -> None:
            if len(written) == 9:  # part-way through the guard and identity files
                board.cut(t)
            written.append(path)
            real_write(path, data, progress)

        t.write_file = cutting_write  # type: ignore[method-assign]
        with pytest.raises(Exception) as info:
            provision_device(t, plan(), registry)
        assert "mpseal" in type(info.value).__module__
        t2 = board.connect()  # power back: a new VM on the same flash
        hw = t2.exec("print(open('/mpseal/sim-id').read().strip())").strip()
        assert registry.device(hw).state == "provisioning"  # recorded, never activated
        res = provision_device(t2, plan(), registry)
        assert res.outcome == "provisioned"
        device_identity_is_known(t2, registry, hw)
        assert sum(1 for c in registry.certificates(hw) if c.status == "revoked") == 1
    finally:
        board.close()


def test_provision_microbit_firmware_in_qemu_interrupted_after_each_step(factory) -> None:
    """MicroPython 1.9.2 on an nRF51: flat filesystem, no guard; identity and sealed secrets.

    One board: provisioned, then re-issued (--force) and stopped after each step in
    turn; every time the next plain run leaves it fully provisioned."""
    plan, registry = factory
    with qemu_microbit() as pts:
        board = MicrobitBoard(pts)
        try:
            t = board.connect()
            p = plan(board="microbit", guard=False)
            first = provision_device(t, p, registry)
            assert first.outcome == "provisioned"
            hw = first.hardware_id
            for stop_at in ("read-id", "issue", "write", "mark", "activate"):

                def hook(_hw: str, step: str, stop_at: str = stop_at) -> None:
                    if step == stop_at:
                        raise Interrupted(step)

                t.soft_reset()  # each run starts on a freshly started board (10 KB heap)
                with pytest.raises(Interrupted):
                    provision_device(t, p, registry, on_step=hook, force=True)
                t.soft_reset()  # as a factory restarts a board: its 10 KB heap starts clean
                res = provision_device(t, p, registry)
                # Stopped before a new key was issued, or after all was done: still whole.
                whole = stop_at in ("read-id", "activate")
                assert res.outcome == ("skipped" if whole else "provisioned")
                device_identity_is_known(t, registry, hw, flat=True)
                marker = json.loads(t.read_file(device_path(MARKER, True), 1024))
                assert marker["fingerprint"] == res.fingerprint
            assert sum(c.status == "valid" for c in registry.certificates(hw)) == 1
            # Ten runs can leave the 10 KB heap fragmented (key and DER sizes vary from run
            # to run; CI once got the MemoryError the transport reports for it): start
            # clean, as before each run above.
            t.soft_reset()
            sealed = t.read_file(device_path(SECRETS, True), 4096)
            opened = json.loads(secretbox.open_(sealed, hw))
            assert {k: opened[k] for k in SECRETS_IN} == SECRETS_IN
        finally:
            board.close()
