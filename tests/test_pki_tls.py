"""Certificates from mpseal in the device's real mbedTLS (MicroPython unix port), mutual TLS.

Positive: the device loads mpseal's DER files, verifies the server by the anchor
``mpseal cert anchor`` chose, and presents its own certificate to (a) Python's ssl
(OpenSSL) and (b) ``openssl s_server -Verify 1``; both servers verify the device.

Negative: each broken certificate FAILS on the device and ``mpseal cert lint`` predicted
it with an error of the matching code. Both sides must agree.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_mpseal
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from pki_support import (
    DeviceResult,
    ca_cert,
    cli_pki,
    der,
    key_der,
    key_pem,
    leaf_cert,
    name,
    openssl_server,
    pem,
    python_server,
    run_device,
)

from mpseal.pki import ca as ca_mod
from mpseal.pki import certs
from mpseal.pki.lint import LintOptions, lint_bytes


@dataclass
class Fleet:
    root: Path
    ca: Path  # CA folder
    out: Path  # issued files
    anchor: Path  # chosen by `mpseal cert anchor`

    @property
    def server(self) -> tuple[Path, Path, Path]:
        return (
            self.out / "server.test.pem",
            self.out / "server.test.key.pem",
            self.out / "server.test-chain.pem",
        )

    @property
    def device(self) -> tuple[Path, Path]:
        return self.out / "device-1.der", self.out / "device-1.key.der"

    @property
    def client_ca(self) -> Path:
        return self.ca / "ca-chain.pem"


def ok(res) -> None:  # type: ignore[no-untyped-def]
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """A CA, a server and a device certificate, and an anchor: all made by the mpseal CLI."""
    root = tmp_path_factory.mktemp("fleet")
    cli_pki(root, ("DNS:server.test", "IP:127.0.0.1"), anchor=True)
    return Fleet(root, root / "ca", root / "out", root / "anchor.der")


def lint_codes(data: bytes, **kw: object) -> set[str]:
    findings = lint_bytes(data, "x", LintOptions(**kw))  # type: ignore[arg-type]
    return {f.code for f in findings if f.severity == "error"}


def device_against_python_server(
    fleet: Fleet,
    chain: Path | None = None,
    key: Path | None = None,
    cert: Path | None = None,
    dkey: Path | None = None,
    anchor: Path | None = None,
    hostname: str = "server.test",
) -> tuple[DeviceResult, object]:
    _s_cert, s_key, s_chain = fleet.server
    d_cert, d_key = fleet.device
    with python_server(chain or s_chain, key or s_key, fleet.client_ca) as (port, server):
        result = run_device(port, cert or d_cert, dkey or d_key, anchor or fleet.anchor, hostname)
    return result, server


# --- the handshakes that must work -------------------------------------------------------


def test_the_anchor_is_the_root_and_lint_finds_nothing_wrong(fleet: Fleet) -> None:
    assert fleet.anchor.read_bytes() == (fleet.ca / "root.der").read_bytes()
    d_cert, _ = fleet.device
    assert lint_codes(d_cert.read_bytes(), role="client") == set()
    assert (
        lint_codes(fleet.anchor.read_bytes(), role="ca", device_clock=dt.datetime.now(dt.UTC))
        == set()
    )
    assert (
        lint_codes(
            fleet.server[2].read_bytes(),
            role="server",
            hostname="server.test",
            issuer=x509.load_der_x509_certificate(fleet.anchor.read_bytes()),
        )
        == set()
    )


def test_mutual_tls_device_and_python_ssl_server(fleet: Fleet) -> None:
    result, server = device_against_python_server(fleet)
    assert result.ok, result.line
    assert result.line == "OK hello device"
    assert server.error is None  # type: ignore[attr-defined]
    assert server.peer_subject == "device-1"  # type: ignore[attr-defined]
    assert server.version == "TLSv1.2"  # type: ignore[attr-defined]
    assert server.peer_chain_length == 1  # type: ignore[attr-defined]


def test_mutual_tls_device_and_openssl_s_server(fleet: Fleet) -> None:
    s_cert, s_key, _ = fleet.server
    d_cert, d_key = fleet.device
    with openssl_server(s_cert, s_key, fleet.ca / "issuing.pem", fleet.client_ca) as (port, proc):
        result = run_device(port, d_cert, d_key, fleet.anchor)
        proc.kill()
        log = proc.communicate(timeout=10)[0]
    assert result.ok, (result.line, log)
    assert result.line == "OK " + "hello from the device"[::-1]
    assert "depth=0 CN = device-1" in log and "Verification: OK" in log, log


def test_one_certificate_per_file_on_the_device(fleet: Fleet, tmp_path: Path) -> None:
    """cadata with two roots: only the first is trusted. A DER chain: only the leaf is sent."""
    other = ca_mod.init_ca(tmp_path / "other", ca_mod.CaOptions(name="Other"))
    ours = (fleet.ca / "root.der").read_bytes()
    theirs = (other.folder / "root.der").read_bytes()
    for first, second, works in ((theirs, ours, False), (ours, theirs, True)):
        (tmp_path / "two.der").write_bytes(first + second)
        assert "der-trailing-data" in lint_codes(first + second, role="ca")
        result, _ = device_against_python_server(fleet, anchor=tmp_path / "two.der")
        assert result.ok is works, result.line
    d_cert, _ = fleet.device
    (tmp_path / "chain.der").write_bytes(
        d_cert.read_bytes() + (fleet.ca / "issuing.der").read_bytes()
    )
    assert "der-trailing-data" in lint_codes((tmp_path / "chain.der").read_bytes(), role="client")
    result, server = device_against_python_server(fleet, cert=tmp_path / "chain.der")
    assert result.ok, result.line
    assert server.peer_chain_length == 1  # type: ignore[attr-defined]


def test_device_ip_address_names_the_server(fleet: Fleet) -> None:
    result, _ = device_against_python_server(fleet, hostname="127.0.0.1")
    assert result.ok, result.line


def test_intermediate_anchor_works_on_the_device(fleet: Fleet) -> None:
    out = fleet.root / "anchor-intermediate.der"
    res = run_mpseal("cert", "anchor", fleet.server[2], "--intermediate", "--out", out)
    ok(res)
    assert "trade-off" in res.stdout and "expires" in res.stdout
    assert out.read_bytes() == (fleet.ca / "issuing.der").read_bytes()
    result, _ = device_against_python_server(fleet, anchor=out)
    assert result.ok, result.line


def _plain_tls_server(chain: Path, key: Path) -> tuple[int, threading.Thread, socket.socket]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(20)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with ctx.wrap_socket(conn, server_side=True):
                pass
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, listener


def test_anchor_from_host_port_then_handshake(fleet: Fleet) -> None:
    _, s_key, s_chain = fleet.server
    port, thread, listener = _plain_tls_server(s_chain, s_key)
    out = fleet.root / "anchor-net.der"
    try:
        res = run_mpseal(
            "cert",
            "anchor",
            f"127.0.0.1:{port}",
            "--ca-bundle",
            fleet.ca / "root.pem",
            "--out",
            out,
            "--json",
        )
    finally:
        thread.join(20)
        listener.close()
    ok(res)
    info = json.loads(res.stdout)
    assert info["fetched"] is True and info["mode"] == "root" and info["warnings"] == []
    assert out.read_bytes() == (fleet.ca / "root.der").read_bytes()
    result, _ = device_against_python_server(fleet, anchor=out)
    assert result.ok, result.line


def test_pin_leaf_refused_for_a_ca_issued_leaf_and_the_device_agrees(fleet: Fleet) -> None:
    res = run_mpseal(
        "cert", "anchor", fleet.server[2], "--pin-leaf", "--out", fleet.root / "pin.der"
    )
    assert res.returncode == 2 and "self-signed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # What the refusal protects against: mbedTLS does not trust a pinned CA-issued leaf.
    pinned = fleet.root / "pinned-leaf.der"
    pinned.write_bytes((fleet.out / "server.test.der").read_bytes())
    result, _ = device_against_python_server(fleet, anchor=pinned)
    assert not result.ok and result.stage == "handshake"


def test_pin_leaf_works_for_a_self_signed_server(fleet: Fleet, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("server.test"))
        .issuer_name(name("server.test"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("server.test")]), False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "self.pem").write_bytes(pem(cert))
    (tmp_path / "self.key.pem").write_bytes(key_pem(key))
    res = run_mpseal(
        "cert", "anchor", tmp_path / "self.pem", "--pin-leaf", "--out", tmp_path / "pin.der"
    )
    ok(res)
    result, _ = device_against_python_server(
        fleet,
        chain=tmp_path / "self.pem",
        key=tmp_path / "self.key.pem",
        anchor=tmp_path / "pin.der",
    )
    assert result.ok, result.line


# --- each broken certificate fails on the device, and lint said so beforehand -------------


def _issuing(fleet: Fleet) -> ca_mod.IssuingCa:
    return ca_mod.load_issuing_ca(fleet.ca)


def _root_key(fleet: Fleet) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(
        (fleet.ca / ca_mod.ROOT_KEY).read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _write_server(
    tmp: Path, leaf: x509.Certificate, key: object, *intermediates: x509.Certificate
) -> tuple[Path, Path]:
    (tmp / "chain.pem").write_bytes(pem(leaf, *intermediates))
    (tmp / "key.pem").write_bytes(key_pem(key))
    return tmp / "chain.pem", tmp / "key.pem"


def test_pem_given_to_the_device(fleet: Fleet) -> None:
    d_cert_pem = fleet.out / "device-1.pem"
    assert "pem-not-der" in lint_codes(d_cert_pem.read_bytes(), role="client")
    result, _ = device_against_python_server(fleet, cert=d_cert_pem)
    assert not result.ok and result.stage == "load_cert_chain", result.line
    assert "invalid cert" in result.line

    anchor_pem = fleet.ca / "root.pem"
    assert "pem-not-der" in lint_codes(anchor_pem.read_bytes(), role="ca")
    result, _ = device_against_python_server(fleet, anchor=anchor_pem)
    assert not result.ok and result.stage == "load_verify_locations", result.line


def test_ed25519_certificate(fleet: Fleet, tmp_path: Path) -> None:
    issuing = _issuing(fleet)
    issuing_key = serialization.load_pem_private_key(
        (fleet.ca / ca_mod.ISSUING_KEY).read_bytes(), password=None
    )
    key = ed25519.Ed25519PrivateKey.generate()
    cert = leaf_cert(
        "device-ed",
        key.public_key(),
        issuing.cert,
        issuing_key,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        sans=(),
    )
    (tmp_path / "ed.der").write_bytes(der(cert))
    (tmp_path / "ed.key.der").write_bytes(key_der(key))
    assert "key-type" in lint_codes(der(cert), role="client")
    result, _ = device_against_python_server(
        fleet, cert=tmp_path / "ed.der", dkey=tmp_path / "ed.key.der"
    )
    assert not result.ok and result.stage == "load_cert_chain", result.line
    # The certificate alone is refused too (with a P-256 key that mbedTLS can load).
    result, _ = device_against_python_server(fleet, cert=tmp_path / "ed.der")
    assert not result.ok and result.stage == "load_cert_chain", result.line
    assert "invalid cert" in result.line

    # An Ed25519 root as the device's anchor: key and signature both unknown to mbedTLS.
    root = ca_cert("ed-root", key, algorithm=None)
    (tmp_path / "ed-root.der").write_bytes(der(root))
    assert {"key-type", "signature-algorithm"} <= lint_codes(der(root), role="ca")
    result, _ = device_against_python_server(fleet, anchor=tmp_path / "ed-root.der")
    assert not result.ok and result.stage == "load_verify_locations", result.line


def test_expired_server_certificate(fleet: Fleet, tmp_path: Path) -> None:
    key = certs.generate_key()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    req = certs.LeafRequest("server.test", "server", days=10, not_before=past)
    leaf = certs.issue(_issuing(fleet), req, key.public_key())
    chain, skey = _write_server(tmp_path, leaf, key, _issuing(fleet).cert)
    assert "expired" in lint_codes(chain.read_bytes(), role="server", hostname="server.test")
    result, _server = device_against_python_server(fleet, chain=chain, key=skey)
    assert not result.ok and result.stage == "handshake", result.line
    assert "expired" in result.line


def test_server_from_the_wrong_ca(fleet: Fleet, tmp_path: Path) -> None:
    other = ca_mod.init_ca(tmp_path / "other-ca", ca_mod.CaOptions(name="Other"))
    other_ca = ca_mod.load_issuing_ca(other.folder)
    key = certs.generate_key()
    leaf = certs.issue(other_ca, certs.LeafRequest("server.test", "server"), key.public_key())
    chain, skey = _write_server(tmp_path, leaf, key, other_ca.cert)
    anchor = x509.load_der_x509_certificate(fleet.anchor.read_bytes())
    assert "issuer-mismatch" in lint_codes(
        chain.read_bytes(), role="server", hostname="server.test", issuer=anchor
    )
    result, _server = device_against_python_server(fleet, chain=chain, key=skey)
    assert not result.ok and result.stage == "handshake", result.line
    assert "not correctly signed by the trusted CA" in result.line


def test_hostname_mismatch(fleet: Fleet) -> None:
    chain = fleet.server[2].read_bytes()
    assert "hostname-mismatch" in lint_codes(chain, role="server", hostname="other.test")
    assert "hostname-mismatch" not in lint_codes(chain, role="server", hostname="server.test")
    result, _ = device_against_python_server(fleet, hostname="other.test")
    assert not result.ok and result.stage == "handshake", result.line
    assert "does not match" in result.line


def test_critical_name_constraints(fleet: Fleet, tmp_path: Path) -> None:
    root = x509.load_pem_x509_certificate((fleet.ca / "root.pem").read_bytes())
    nc = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("server.test")], excluded_subtrees=None
    )
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = ca_cert("constrained issuing", inter_key, root, _root_key(fleet), extra=((nc, True),))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = leaf_cert("server.test", key.public_key(), inter, inter_key)
    chain, skey = _write_server(tmp_path, leaf, key, inter)
    assert "name-constraints" in lint_codes(der(inter), role="ca")
    assert "name-constraints" in lint_codes(
        chain.read_bytes(), role="server", hostname="server.test"
    )
    result, _ = device_against_python_server(fleet, chain=chain, key=skey)
    assert not result.ok and result.stage == "handshake", result.line


NC = x509.NameConstraints(permitted_subtrees=[x509.DNSName("server.test")], excluded_subtrees=None)
PC = x509.PolicyConstraints(require_explicit_policy=0, inhibit_policy_mapping=None)
ODD_POLICY = x509.CertificatePolicies(
    [x509.PolicyInformation(x509.ObjectIdentifier("1.2.3.4"), None)]
)
ANY_POLICY = x509.CertificatePolicies(
    [x509.PolicyInformation(x509.ObjectIdentifier("2.5.29.32.0"), None)]
)
UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")


@pytest.mark.parametrize(
    "ext,critical,code",
    [
        (NC, True, "name-constraints"),
        (NC, False, None),
        (PC, True, "policy-constraints"),
        (PC, False, None),
        (ODD_POLICY, True, "critical-certificate-policies"),
        (ANY_POLICY, True, None),
        (UNKNOWN, True, "critical-extension-unknown"),
        (UNKNOWN, False, None),
    ],
    ids=[
        "nc-critical",
        "nc",
        "pc-critical",
        "pc",
        "policy-critical",
        "anypolicy-critical",
        "unknown-critical",
        "unknown",
    ],
)
def test_intermediate_extensions_lint_and_device_agree(
    fleet: Fleet, tmp_path: Path, ext: x509.ExtensionType, critical: bool, code: str | None
) -> None:
    root = x509.load_pem_x509_certificate((fleet.ca / "root.pem").read_bytes())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = ca_cert(
        "issuing with extension", inter_key, root, _root_key(fleet), extra=((ext, critical),)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    chain, skey = _write_server(
        tmp_path, leaf_cert("server.test", key.public_key(), inter, inter_key), key, inter
    )
    errors = lint_codes(chain.read_bytes(), role="server", hostname="server.test")
    result, _ = device_against_python_server(fleet, chain=chain, key=skey)
    assert errors == ({code} if code else set())
    assert result.ok is (code is None), result.line


@pytest.mark.parametrize(
    "curve,works",
    [
        (ec.SECP384R1(), True),
        (ec.SECP521R1(), True),  # lint: a warning, not an error
        (ec.SECP256K1(), False),
        (ec.BrainpoolP256R1(), False),
    ],
    ids=["p384", "p521", "secp256k1", "brainpoolP256r1"],
)
def test_server_key_curves_lint_and_device_agree(
    fleet: Fleet, tmp_path: Path, curve: ec.EllipticCurve, works: bool
) -> None:
    root = x509.load_pem_x509_certificate((fleet.ca / "root.pem").read_bytes())
    key = ec.generate_private_key(curve)
    leaf = leaf_cert("server.test", key.public_key(), root, _root_key(fleet))
    chain, skey = _write_server(tmp_path, leaf, key)
    predicted_failure = "key-curve" in lint_codes(der(leaf), role="server")
    result, _ = device_against_python_server(fleet, chain=chain, key=skey)
    assert result.ok is works and predicted_failure is not works, result.line


def test_weak_signature_hash(fleet: Fleet, tmp_path: Path) -> None:
    root = x509.load_pem_x509_certificate((fleet.ca / "root.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = leaf_cert(
        "server.test", key.public_key(), root, _root_key(fleet), algorithm=hashes.SHA224()
    )
    chain, skey = _write_server(tmp_path, leaf, key)
    assert "weak-signature-hash" in lint_codes(der(leaf), role="server")
    result, _ = device_against_python_server(fleet, chain=chain, key=skey)
    assert not result.ok and "unacceptable hash" in result.line


def _padded_name(length: int) -> str:
    """A host name of exactly ``length`` characters, in labels of at most 60."""
    body = "a" * (length - len(".test"))
    return ".".join(body[i : i + 60] for i in range(0, len(body), 61)) + ".test"


def _client_cert_of_size(fleet: Fleet, size: int) -> tuple[bytes, bytes]:
    """A device certificate of exactly ``size`` DER bytes (a long SAN; ECDSA varies +-2)."""
    issuing = _issuing(fleet)
    key = certs.generate_key()
    sans = [f"{i}.pad.test" for i in range(255)]  # most of the size; the last name fine-tunes
    length = 100
    for _ in range(100):
        req = certs.LeafRequest("device-big", "client", (*sans, _padded_name(length)))
        cert = der(certs.issue(issuing, req, key.public_key()))
        if len(cert) == size:
            return cert, certs.key_pem_der(key)[1]
        length = min(250, max(20, length + size - len(cert)))
    raise AssertionError(f"could not make a {size}-byte certificate")


@pytest.mark.parametrize("size,fits", [(4086, True), (4087, False)])
def test_client_certificate_must_fit_the_4k_record(
    fleet: Fleet, tmp_path: Path, size: int, fits: bool
) -> None:
    cert, key = _client_cert_of_size(fleet, size)
    (tmp_path / "big.der").write_bytes(cert)
    (tmp_path / "big.key.der").write_bytes(key)
    predicted = "cert-message-too-large" in lint_codes(cert, role="client")
    result, _ = device_against_python_server(
        fleet, cert=tmp_path / "big.der", dkey=tmp_path / "big.key.der"
    )
    assert predicted is not fits
    assert result.ok is fits, result.line
    if not fits:
        assert "BUFFER_TOO_SMALL" in result.line
