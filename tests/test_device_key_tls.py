"""A key born on the device does mutual TLS: the device (MicroPython unix port, its real
mbedTLS) makes its key and CSR with mpseal_csr, ``mpseal cert issue --csr`` issues its
client certificate, and an OpenSSL server that requires a client certificate from the
CA accepts the device, whose TLS client loads the key file create_key wrote (SEC1 DER, as
provisioning's device.key.der). The key file is read only by the device."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import run_mpseal
from cryptography import x509
from pki_support import cli_pki, python_server, run_device

from mpseal.device.vm import find_micropython, runtime_dir, vm_env

DEVICE = """
import sys
sys.path.insert(0, sys.argv[1])
import mpseal_csr
d = sys.argv[2]
mpseal_csr.create_key(d + "/device.key.der")
with open(d + "/csr.der", "wb") as f:
    f.write(mpseal_csr.csr([("O", "Acme"), ("CN", "device-born-1")], d + "/device.key.der"))
"""


def ok(res) -> None:  # type: ignore[no-untyped-def]
    assert res.returncode == 0, res.stderr


def test_device_born_key_does_mutual_tls_with_its_issued_certificate(tmp_path: Path) -> None:
    cli_pki(tmp_path, ("DNS:server.test",), device=False, anchor=True)

    dev = tmp_path / "device"
    dev.mkdir()
    (tmp_path / "make.py").write_text(DEVICE)
    proc = subprocess.run(
        [str(find_micropython()), str(tmp_path / "make.py"), str(runtime_dir()), str(dev)],
        capture_output=True,
        text=True,
        timeout=300,
        env=vm_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    csr = x509.load_der_x509_csr((dev / "csr.der").read_bytes())
    assert csr.is_signature_valid

    ok(
        run_mpseal(
            "cert",
            "issue",
            "device-born-1",
            "--ca",
            tmp_path / "ca",
            "--role",
            "client",
            "--csr",
            dev / "csr.der",
            "--out",
            tmp_path / "out",
        )
    )
    cert = tmp_path / "out" / "device-born-1.der"
    assert x509.load_der_x509_certificate(cert.read_bytes()).public_key() == csr.public_key()
    assert not (tmp_path / "out" / "device-born-1.key.der").exists()  # no key on the host

    s_chain = tmp_path / "out" / "server.test-chain.pem"
    s_key = tmp_path / "out" / "server.test.key.pem"
    with python_server(s_chain, s_key, tmp_path / "ca" / "ca-chain.pem") as (port, server):
        result = run_device(port, cert, dev / "device.key.der", tmp_path / "anchor.der")
    assert result.ok, result.line
    assert server.error is None
    assert server.peer_subject == "device-born-1"
