"""Mutual TLS on the real server: uvicorn terminates TLS, asks for a client certificate from
the fleet CA, and the device is identified by the SHA-256 fingerprint of that certificate in
the registry. A revoked certificate is refused; a certificate of another CA fails the
handshake; a device without a certificate may still use its bearer token."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from server_support import config_for, make_artifact, make_keys, register, running_server

from mpseal.fleet.registry import Registry
from mpseal.server.run import RunOptions


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str, server: bool, folder: Path
) -> tuple[Path, Path, str]:
    """Write <cn>.pem and <cn>.key; return their paths and the DER fingerprint."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = b.sign(ca_key, hashes.SHA256())
    cert_path, key_path = folder / f"{cn}.pem", folder / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return cert_path, key_path, hashlib.sha256(der).hexdigest()


def client(
    url: str,
    ca_file: Path,
    cert: tuple[Path, Path] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return httpx.Client(base_url=url, verify=ctx, headers=headers or {}, timeout=20)


def check(hw: str) -> dict[str, object]:
    return {
        "hardware_id": hw,
        "board": "esp32",
        "app": "hello",
        "version": "1.0.0",
        "counter": 1,
        "timestamp_version": 0,
    }


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    folder = tmp_path / "pki"
    folder.mkdir()
    server_ca, fleet_ca, other_ca = make_ca("server CA"), make_ca("fleet CA"), make_ca("evil CA")
    for name, (_, cert) in (("server-ca", server_ca), ("fleet-ca", fleet_ca)):
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {
        "folder": folder,
        "server": make_leaf(server_ca, "update-server", True, folder),
        "dev0": make_leaf(fleet_ca, "dev-00000", False, folder),
        "dev1": make_leaf(fleet_ca, "dev-00001", False, folder),
        "stranger": make_leaf(fleet_ca, "unregistered", False, folder),
        "evil": make_leaf(other_ca, "dev-00000-forged", False, folder),
    }


def test_device_identified_by_client_certificate_and_refused_once_revoked(
    db_url: str, tmp_path: Path, pki: dict
) -> None:
    folder: Path = pki["folder"]
    dev0, dev1 = pki["dev0"], pki["dev1"]
    fleet = register(db_url, 2, fingerprints={"dev-00000": dev0[2], "dev-00001": dev1[2]})
    keys = make_keys(tmp_path / "keys")
    options = RunOptions(
        tls_cert=pki["server"][0], tls_key=pki["server"][1], client_ca=folder / "fleet-ca.pem"
    )
    cfg = config_for(db_url, keys, tmp_path, cache_seconds=0.0)
    ca_file = folder / "server-ca.pem"
    with running_server(cfg, options) as srv:
        assert srv.url.startswith("https://")
        with srv.admin(verify=ssl.create_default_context(cafile=str(ca_file))) as admin:
            rid = admin.post(
                "/v1/admin/releases", content=make_artifact(keys.release, "1.1.0", 2)
            ).json()["release"]["id"]
            admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100})

        # The certificate alone identifies the device: no token is sent.
        with client(srv.url, ca_file, dev0[:2]) as c:
            r = c.post("/v1/device/check", json=check("dev-00000"))
            assert r.status_code == 200 and r.json()["update"] is True
            # ... and it cannot speak for another device.
            assert c.post("/v1/device/check", json=check("dev-00001")).status_code == 403
        # A certificate of the fleet CA that the registry does not know is refused.
        with client(srv.url, ca_file, pki["stranger"][:2]) as c:
            assert c.post("/v1/device/check", json=check("dev-00000")).status_code == 403
        # A certificate of another CA does not even complete the handshake.
        with client(srv.url, ca_file, pki["evil"][:2]) as c, pytest.raises(httpx.HTTPError):
            c.post("/v1/device/check", json=check("dev-00000"))
        # No certificate: the bearer token still works (CERT_OPTIONAL).
        with client(srv.url, ca_file, headers=fleet.headers("dev-00001")) as c:
            assert c.post("/v1/device/check", json=check("dev-00001")).status_code == 200

        # Revoke the certificate in the registry: the next connection is refused.
        Registry.open(db_url).revoke_certificate(dev0[2], "key extracted from a returned unit")
        with client(srv.url, ca_file, dev0[:2]) as c:
            r = c.post("/v1/device/check", json=check("dev-00000"))
            assert r.status_code == 403 and "revoked" in r.json()["error"]
            assert c.get("/v1/timestamp/stable.mpst").status_code == 403
        with client(srv.url, ca_file, dev1[:2]) as c:
            assert c.post("/v1/device/check", json=check("dev-00001")).status_code == 200
