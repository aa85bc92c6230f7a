"""``cert lint`` against the device's real mbedTLS: the rules an outside check found wrong.

Each case builds a server chain, asks lint, then runs the real handshake from the
MicroPython unix port (mbedTLS 3.6) against an OpenSSL server on 127.0.0.1: lint's
verdict and the device's must agree. Cases: pathLenConstraint (the anchor's own
included), more than 8 intermediates, a host name with a trailing dot, the keyUsage
an ECDHE key exchange needs (RSA and EC), and PEM/bundles by firmware version.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_mpseal
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from pki_support import cli_pki, der, key_pem, name, now, pem, python_server, run_device

from mpseal.pki import device as device_model
from mpseal.pki.lint import LintOptions, lint_bytes

DIGITAL_SIGNATURE = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
KEY_ENCIPHERMENT = x509.KeyUsage(False, False, True, False, False, False, False, False, False)


@dataclass
class Client:
    cert: Path
    key: Path
    client_ca: Path


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Client:
    """A device identity the OpenSSL server accepts (the chains under test are the server's)."""
    root = tmp_path_factory.mktemp("client")
    cli_pki(root)
    return Client(
        root / "out/device-1.der", root / "out/device-1.key.der", root / "ca/ca-chain.pem"
    )


def _ca(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    parent: x509.Certificate | None,
    parent_key: ec.EllipticCurvePrivateKey | None,
    pathlen: int | None,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(parent.subject if parent else name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - dt.timedelta(hours=1))
        .not_valid_after(now() + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(parent_key or key, hashes.SHA256())
    )


@dataclass
class Chain:
    root: x509.Certificate
    chain_pem: bytes  # leaf first, then the intermediates, as the server sends them
    key_pem: bytes


def make_chain(
    root_pathlen: int | None,
    inter_pathlens: list[int | None],
    leaf_key: object | None = None,
    key_usage: x509.KeyUsage | None = None,
) -> Chain:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca("test root", root_key, None, None, root_pathlen)
    parent, parent_key, inters = root, root_key, []
    for i, pathlen in enumerate(inter_pathlens):
        key = ec.generate_private_key(ec.SECP256R1())
        parent = _ca(f"intermediate {i}", key, parent, parent_key, pathlen)
        parent_key = key
        inters.append(parent)
    key = leaf_key or ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(name("server.test"))
        .issuer_name(parent.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())  # type: ignore[attr-defined]
        .not_valid_before(now() - dt.timedelta(hours=1))
        .not_valid_after(now() + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("server.test")]), critical=False)
    )
    if key_usage is not None:
        b = b.add_extension(key_usage, critical=True)
    leaf = b.sign(parent_key, hashes.SHA256())
    return Chain(root, pem(leaf, *reversed(inters)), key_pem(key))


def lint_errors(
    chain: Chain,
    hostname: str = "server.test",
    firmware: device_model.Firmware = device_model.DER_ONLY,
) -> set[str]:
    options = LintOptions(role="server", hostname=hostname, issuer=chain.root, firmware=firmware)
    return {
        f.code for f in lint_bytes(chain.chain_pem, "chain.pem", options) if f.severity == "error"
    }


def handshake(client: Client, chain: Chain, tmp: Path, hostname: str = "server.test") -> str:
    (tmp / "chain.pem").write_bytes(chain.chain_pem)
    (tmp / "key.pem").write_bytes(chain.key_pem)
    (tmp / "anchor.der").write_bytes(der(chain.root))
    with python_server(tmp / "chain.pem", tmp / "key.pem", client.client_ca) as (port, _):
        result = run_device(port, client.cert, client.key, tmp / "anchor.der", hostname)
    return result.line


@pytest.mark.parametrize(
    "root_pathlen,inter_pathlens,works",
    [
        (1, [0], True),
        (None, [None, None], True),
        (0, [None], False),  # the anchor's own pathLenConstraint is enforced
        (1, [None, None], False),
        (None, [0, None], False),  # an intermediate's
        (1, [0, None], False),  # a sub-CA under mpseal's own root (1) and issuing CA (0)
    ],
    ids=[
        "root1-issuing0",
        "unconstrained",
        "root0-one-ca",
        "root1-two-cas",
        "inter0-sub-ca",
        "mpseal-root-issuing-sub-ca",
    ],
)
def test_path_length_lint_and_device_agree(
    client: Client,
    tmp_path: Path,
    root_pathlen: int | None,
    inter_pathlens: list[int | None],
    works: bool,
) -> None:
    chain = make_chain(root_pathlen, inter_pathlens)
    line = handshake(client, chain, tmp_path)
    assert line.startswith("OK") is works, line
    assert ("path-length" in lint_errors(chain)) is not works
    if not works:
        assert "not correctly signed by the trusted CA" in line


@pytest.mark.parametrize("count,works", [(8, True), (9, False)])
def test_intermediate_count_lint_and_device_agree(
    client: Client, tmp_path: Path, count: int, works: bool
) -> None:
    chain = make_chain(None, [None] * count)
    line = handshake(client, chain, tmp_path)
    assert line.startswith("OK") is works, line
    assert ("too-many-intermediates" in lint_errors(chain)) is not works
    if not works:
        assert "MBEDTLS_ERR_X509_FATAL_ERROR" in line


@pytest.mark.parametrize(
    "hostname,works",
    [("server.test", True), ("SERVER.Test", True), ("server.test.", False)],
    ids=["plain", "case", "trailing-dot"],
)
def test_hostname_form_lint_and_device_agree(
    client: Client, tmp_path: Path, hostname: str, works: bool
) -> None:
    chain = make_chain(None, [None])
    line = handshake(client, chain, tmp_path, hostname)
    assert line.startswith("OK") is works, line
    assert ("hostname-mismatch" in lint_errors(chain, hostname)) is not works


@pytest.mark.parametrize(
    "kind,usage,works",
    [
        ("rsa", KEY_ENCIPHERMENT, False),  # static RSA key exchange: not offered by the device
        ("rsa", DIGITAL_SIGNATURE, True),  # ECDHE-RSA signs the key share
        ("ec", KEY_ENCIPHERMENT, False),
        ("ec", DIGITAL_SIGNATURE, True),
    ],
    ids=[
        "rsa-keyEncipherment-only",
        "rsa-digitalSignature-only",
        "ec-keyEncipherment-only",
        "ec-digitalSignature-only",
    ],
)
def test_server_key_usage_lint_and_device_agree(
    client: Client, tmp_path: Path, kind: str, usage: x509.KeyUsage, works: bool
) -> None:
    key = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    chain = make_chain(None, [None], leaf_key=key, key_usage=usage)
    line = handshake(client, chain, tmp_path)
    assert line.startswith("OK") is works, line
    assert ("key-usage" in lint_errors(chain)) is not works


def test_pem_anchor_by_firmware_version(client: Client, tmp_path: Path) -> None:
    """The VM's firmware (v1.29.0-preview, before PR #19569) parses no PEM; lint agrees for it.

    Firmware with the PR (v1.29.0 and later, and ESP32's ESP-IDF build) parses PEM and CA
    bundles: lint says so, but there is no such firmware here to run the handshake on."""
    chain = make_chain(None, [None])
    (tmp_path / "chain.pem").write_bytes(chain.chain_pem)
    (tmp_path / "key.pem").write_bytes(chain.key_pem)
    (tmp_path / "anchor.pem").write_bytes(pem(chain.root))
    with python_server(tmp_path / "chain.pem", tmp_path / "key.pem", client.client_ca) as (port, _):
        result = run_device(port, client.cert, client.key, tmp_path / "anchor.pem")
    assert not result.ok and result.stage == "load_verify_locations", result.line

    def pem_error(firmware: str) -> bool:
        options = LintOptions(role="ca", firmware=device_model.firmware(firmware))
        return any(
            f.code == "pem-not-der" and f.severity == "error"
            for f in lint_bytes(pem(chain.root), "anchor.pem", options)
        )

    assert pem_error("1.28") and pem_error("1.29.0-preview")  # the VM here
    assert not pem_error("1.29.0") and not pem_error("esp32")


def test_firmware_option_on_the_command_line(tmp_path: Path) -> None:
    chain = make_chain(None, [None])
    (tmp_path / "anchor.pem").write_bytes(pem(chain.root))
    old = run_mpseal("cert", "lint", tmp_path / "anchor.pem", "--role", "ca", "--firmware", "1.28")
    new = run_mpseal(
        "cert", "lint", tmp_path / "anchor.pem", "--role", "ca", "--firmware", "1.29.0"
    )
    bad = run_mpseal("cert", "lint", tmp_path / "anchor.pem", "--firmware", "latest")
    assert old.returncode == 3 and "pem-not-der" in old.stdout
    assert new.returncode == 0, new.stdout
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--firmware" in bad.stderr
