"""`mpseal provision --keygen device`: the device makes its own key; the host gets a CSR,
checks it, issues the certificate for that key and records it; no private key on the host."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from conftest import run_mpseal
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mpseal.device.sim import VirtualBoard
from mpseal.device.simlink import connect
from mpseal.fleet.provision import CERT, KEY


def device_files(sim: Path) -> tuple[bytes, bytes]:
    """The certificate and key files as the device holds them (read here by the test)."""
    transport, link = connect(VirtualBoard(sim))
    try:
        return transport.read_file(CERT, 4096), transport.read_file(KEY, 4096)
    finally:
        transport.close()
        link.close()


def test_device_made_key_gets_its_certificate(project: Path, tmp_path: Path) -> None:
    assert run_mpseal("ca", "init", project / "ca").returncode == 0
    sim = tmp_path / "sim"
    assert run_mpseal("sim", "create", "--sim", sim).returncode == 0
    res = run_mpseal(
        "provision", "-C", project, "--sim", sim, "--keygen", "device", "--json", timeout=300
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["provisioned"] == 1
    dev = out["devices"][0]

    cert_der, key_der = device_files(sim)
    # SEC1 DER as mpseal_csr writes it on the device (a host-made key is PKCS#8)
    assert key_der[:7] == bytes.fromhex("30770201010420")
    cert = x509.load_der_x509_certificate(cert_der)
    key = serialization.load_der_private_key(key_der, None)  # made by the device
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert cert.public_key() == key.public_key()
    assert hashlib.sha256(cert_der).hexdigest() == dev["fingerprint"]
    # no private key anywhere under the project on the host
    for f in project.rglob("*"):
        if f.is_file() and f.stat().st_size < 1_000_000:
            assert key.private_numbers().private_value.to_bytes(32, "big") not in f.read_bytes()

    # --force: a fresh key made by the device, a new certificate, the old one superseded
    res = run_mpseal(
        "provision",
        "-C",
        project,
        "--sim",
        sim,
        "--keygen",
        "device",
        "--force",
        "--json",
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    cert2_der, key2_der = device_files(sim)
    assert key2_der != key_der and cert2_der != cert_der
    key2 = serialization.load_der_private_key(key2_der, None)
    assert x509.load_der_x509_certificate(cert2_der).public_key() == key2.public_key()
