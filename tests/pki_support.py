"""Shared helpers for the PKI tests: TLS servers on 127.0.0.1 and the device client in the VM.

Two real servers that require a client certificate: Python's ``ssl`` (OpenSSL) in a
thread, and ``openssl s_server -Verify 1`` as a subprocess. The device is
``tests/device/tls_client.py`` run by the MicroPython unix port (mbedTLS).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import run_mpseal
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mpseal.device.vm import vm_env

MICROPYTHON = Path(sys.executable).parent / "micropython"
DEVICE_CLIENT = Path(__file__).parent / "device" / "tls_client.py"
OPENSSL = shutil.which("openssl") or "openssl"
HOST = "127.0.0.1"
SHA256 = hashes.SHA256()  # the default signature hash of the test certificates


@dataclass
class DeviceResult:
    ok: bool
    line: str  # "OK <reply>" or "FAIL <stage> <exception repr>"

    @property
    def stage(self) -> str:
        return "" if self.ok else self.line.split()[1]


def run_device(
    port: int, cert: Path | str, key: Path | str, anchor: Path, hostname: str = "server.test"
) -> DeviceResult:
    """The device connects to 127.0.0.1:port, verifying the server by ``anchor``."""
    proc = subprocess.run(
        [
            str(MICROPYTHON),
            str(DEVICE_CLIENT),
            HOST,
            str(port),
            str(cert),
            str(key),
            str(anchor),
            hostname,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=vm_env(),
    )
    line = (proc.stdout.strip().splitlines() or [proc.stderr.strip()])[-1]
    assert line.startswith(("OK", "FAIL")), (proc.stdout, proc.stderr)
    assert (proc.returncode == 0) == line.startswith("OK"), line
    return DeviceResult(line.startswith("OK"), line)


@dataclass
class ServerResult:
    peer_subject: str | None = None
    peer_chain_length: int | None = None  # certificates the client sent
    version: str | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


@contextmanager
def python_server(
    chain_pem: Path, key_pem: Path, client_ca: Path
) -> Iterator[tuple[int, ServerResult]]:
    """An OpenSSL server (Python ``ssl``) that requires and verifies a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain_pem, key_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(client_ca))
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(1)
    listener.settimeout(20)
    result = ServerResult()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(20)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                result.version = tls.version()
                result.peer_subject = dict(x[0] for x in peer["subject"])["commonName"]
                chain = (
                    getattr(tls, "get_unverified_chain", None) or tls._sslobj.get_unverified_chain
                )  # type: ignore[union-attr]  # < 3.13
                result.peer_chain_length = len(chain())
                tls.recv(256)
                tls.sendall(b"hello device\n")
        except (OSError, ssl.SSLError) as e:
            result.error = repr(e)
        finally:
            listener.close()
            result.done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], result
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() if the device never connected
        result.done.wait(25)
        listener.close()


@contextmanager
def openssl_server(
    cert_pem: Path, key_pem: Path, chain_pem: Path, client_ca: Path
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """``openssl s_server -Verify 1``: a client certificate is required; one connection."""
    proc = subprocess.Popen(
        [
            OPENSSL,
            "s_server",
            "-accept",
            f"{HOST}:0",
            "-cert",
            str(cert_pem),
            "-key",
            str(key_pem),
            "-cert_chain",
            str(chain_pem),
            "-CAfile",
            str(client_ca),
            "-Verify",
            "1",
            "-naccept",
            "1",
            "-rev",
            "-verify_return_error",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 15
        assert proc.stdout is not None
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"ACCEPT 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        assert port is not None, "openssl s_server did not start"
        yield port, proc
    finally:
        proc.kill()
        proc.wait(10)


# --- certificates built directly with cryptography (things mpseal refuses to make) ----------


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ca_cert(
    subject: str,
    key: Any,
    issuer: x509.Certificate | None = None,
    issuer_key: Any = None,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    algorithm: hashes.HashAlgorithm | None = SHA256,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer.subject if issuer else name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - dt.timedelta(hours=1))
        .not_valid_after(now() + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    )
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(issuer_key or key, algorithm)  # type: ignore[arg-type]


def leaf_cert(
    subject: str,
    public_key: object,
    issuer: x509.Certificate,
    issuer_key: object,
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
    sans: tuple[str, ...] = ("server.test",),
    days: int = 30,
    algorithm: hashes.HashAlgorithm | None = SHA256,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())  # type: ignore[arg-type]
        .not_valid_before(now() - dt.timedelta(hours=1))
        .not_valid_after(now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    )
    if sans:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
        )
    return b.sign(issuer_key, algorithm)  # type: ignore[arg-type]


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def key_pem(key: object) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,  # type: ignore[attr-defined]
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_der(key: object) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,  # type: ignore[attr-defined]
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ok(res: Any) -> None:
    assert res.returncode == 0, res.stderr


def cli_pki(
    root: Path, server_sans: tuple[str, ...] = (), device: bool = True, anchor: bool = False
) -> None:
    """What a fleet sets up with the mpseal CLI, in ``root``: a CA in ``ca/`` (org Acme);
    in ``out/`` the server certificate ``server.test`` when ``server_sans`` are given and
    the client certificate ``device-1`` when ``device``; with ``anchor``, the anchor that
    ``cert anchor`` picks for the server (its root) in ``anchor.der``."""
    ca, out = root / "ca", root / "out"
    _ok(run_mpseal("ca", "init", ca, "--org", "Acme"))
    if server_sans:
        sans = [arg for san in server_sans for arg in ("--san", san)]
        args = ["server.test", "--ca", ca, "--role", "server", *sans, "--out", out]
        _ok(run_mpseal("cert", "issue", *args))
    if device:
        _ok(run_mpseal("cert", "issue", "device-1", "--ca", ca, "--role", "client", "--out", out))
    if anchor:
        pick = [out / "server.test-chain.pem", "--ca-bundle", ca / "root.pem", "--json"]
        res = run_mpseal("cert", "anchor", *pick, "--out", root / "anchor.der")
        _ok(res)
        assert json.loads(res.stdout)["mode"] == "root"
