"""``cert lint`` findings one by one, and hostile input: a clean finding, never a traceback."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st
from pki_support import ca_cert, der, leaf_cert, name, pem

from mpseal.errors import FormatError, UsageError
from mpseal.pki import der as derlib
from mpseal.pki.lint import Finding, LintOptions, hostname_matches, lint_bytes, lint_file

UTC = dt.UTC
ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
ROOT = ca_cert("test root", ROOT_KEY)
LEAF_KEY = ec.generate_private_key(ec.SECP256R1())
LEAF = leaf_cert("server.test", LEAF_KEY.public_key(), ROOT, ROOT_KEY, days=90)
LEAF_DER = der(LEAF)


def lint(data: bytes, **kw: object) -> list[Finding]:
    findings = lint_bytes(data, "f", LintOptions(**kw))  # type: ignore[arg-type]
    for f in findings:
        assert f.severity in ("error", "warning", "info")
        assert f.code and f.message and f.breaks and f.fix
    return findings


def errors(data: bytes, **kw: object) -> set[str]:
    return {f.code for f in lint(data, **kw) if f.severity == "error"}


def warnings_(data: bytes, **kw: object) -> set[str]:
    return {f.code for f in lint(data, **kw) if f.severity == "warning"}


def build(**kw: object) -> bytes:
    """A leaf signed by ROOT with the given changes."""
    key = kw.pop("key", LEAF_KEY)
    b = (
        x509.CertificateBuilder()
        .subject_name(name(str(kw.pop("cn", "server.test"))))
        .issuer_name(ROOT.subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(kw.pop("start", dt.datetime.now(UTC) - dt.timedelta(hours=1)))  # type: ignore[arg-type]
        .not_valid_after(kw.pop("end", dt.datetime.now(UTC) + dt.timedelta(days=90)))
    )  # type: ignore[arg-type]
    for ext, critical in kw.pop("exts", ()):  # type: ignore[attr-defined]
        b = b.add_extension(ext, critical=critical)
    return der(b.sign(kw.pop("signer", ROOT_KEY), kw.pop("hash", hashes.SHA256())))  # type: ignore[arg-type]


SAN = (x509.SubjectAlternativeName([x509.DNSName("server.test")]), False)


def ku(**on: bool) -> tuple[x509.KeyUsage, bool]:
    fields = {
        "digital_signature": False,
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "key_cert_sign": False,
        "crl_sign": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    fields.update(on)
    return x509.KeyUsage(**fields), True


def test_a_good_server_certificate_has_no_errors_or_warnings() -> None:
    findings = lint(
        LEAF_DER,
        role="server",
        hostname="server.test",
        issuer=ROOT,
        device_clock=dt.datetime.now(UTC),
    )
    assert [f for f in findings if f.severity != "info"] == []


def test_p521_is_a_warning() -> None:
    data = build(key=ec.generate_private_key(ec.SECP521R1()), exts=[SAN])
    assert "key-curve" in warnings_(data, role="server")
    assert "key-curve" not in errors(data, role="server")


@pytest.mark.parametrize(
    "key,code",
    [
        (ec.generate_private_key(ec.BrainpoolP256R1()), "key-curve"),
        (ec.generate_private_key(ec.SECP256K1()), "key-curve"),
        (rsa.generate_private_key(65537, 1024), "rsa-key-size"),
    ],
)
def test_keys_the_device_cannot_use(key: object, code: str) -> None:
    assert code in errors(build(key=key, exts=[SAN]), role="server")


def test_p384_and_rsa2048_are_fine() -> None:
    for key in (ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)):
        found = errors(build(key=key, exts=[SAN]), role="server", hostname="server.test")
        assert not found & {"key-curve", "rsa-key-size", "key-type"}


def test_sha224_signature_is_an_error() -> None:
    # (cryptography no longer signs with SHA-1; SHA-224 is below mbedTLS's profile too.)
    assert "weak-signature-hash" in errors(build(hash=hashes.SHA224(), exts=[SAN]), role="server")
    self_signed = ca_cert("old root", ROOT_KEY, algorithm=hashes.SHA224())
    found = [f for f in lint(der(self_signed), role="ca") if f.code == "weak-signature-hash"]
    assert found and found[0].severity == "info"  # an anchor's own signature is not checked


def test_usage_for_the_role() -> None:
    server_only = (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    assert "ext-key-usage" in errors(build(exts=[server_only]), role="client")
    assert "ext-key-usage" not in errors(build(exts=[server_only, SAN]), role="server")
    assert "key-usage" in errors(build(exts=[SAN, ku(key_agreement=True)]), role="server")
    assert "key-usage" not in errors(
        build(exts=[SAN, ku(digital_signature=True, key_agreement=True)]), role="server"
    )
    assert "basic-constraints" in errors(LEAF_DER, role="ca")


def test_ca_without_keycertsign_is_an_error() -> None:
    bc = (x509.BasicConstraints(ca=True, path_length=None), True)
    assert "key-usage" in errors(build(exts=[bc, ku(crl_sign=True)]), role="ca")
    assert errors(der(ROOT), role="ca") == set()


def test_names() -> None:
    assert "san-missing" in warnings_(build(), role="server", hostname="server.test")
    assert "hostname-mismatch" not in errors(build(), role="server", hostname="server.test")
    wild = (x509.SubjectAlternativeName([x509.DNSName("*.example.com")]), False)
    cert = x509.load_der_x509_certificate(build(exts=[wild]))
    assert hostname_matches(cert, "a.example.com")
    assert hostname_matches(cert, "A.Example.COM")
    assert not hostname_matches(cert, "a.example.com.")  # mbedTLS: a trailing dot never matches
    assert not hostname_matches(cert, "example.com")
    assert not hostname_matches(cert, "a.b.example.com")
    ip = (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]), False)
    assert "hostname-mismatch" in errors(build(exts=[ip]), role="server", hostname="10.0.0.2")
    assert "hostname-mismatch" not in errors(build(exts=[ip]), role="server", hostname="10.0.0.1")


def test_time_host_clock_and_device_clock() -> None:
    now = dt.datetime.now(UTC)
    old = build(exts=[SAN], start=now - dt.timedelta(days=20), end=now - dt.timedelta(days=1))
    assert "expired" in errors(old, role="server")
    future = build(exts=[SAN], start=now + dt.timedelta(days=2), end=now + dt.timedelta(days=9))
    assert "not-yet-valid" in errors(future, role="server")
    soon = build(exts=[SAN], end=now + dt.timedelta(days=5))
    assert "expires-soon" in warnings_(soon, role="server")
    # Unset clock: a warning that names the boards and says to set the clock first.
    found = [f for f in lint(LEAF_DER, role="server") if f.code == "clock-unset"]
    assert len(found) == 1 and found[0].severity == "warning"
    assert "esp32" in found[0].message and "rp2" in found[0].message
    assert "set the clock" in found[0].fix
    # The device's own certificate is checked by the server's clock, not the device's.
    assert "clock-unset" not in warnings_(LEAF_DER, role="client")
    # An explicit device date.
    assert "device-clock-before-validity" in errors(
        LEAF_DER, role="server", device_clock=dt.datetime(2021, 1, 1, tzinfo=UTC)
    )
    assert "device-clock-after-validity" in errors(
        LEAF_DER, role="server", device_clock=now + dt.timedelta(days=400)
    )
    # A certificate valid from 2020 is fine for rp2's unset clock but not for the ESP32's.
    early = build(exts=[SAN], start=dt.datetime(2020, 6, 1, tzinfo=UTC))
    found = [f for f in lint(early, role="server") if f.code == "clock-unset"]
    assert "esp32" in found[0].message and "rp2" not in found[0].message


def test_chain_checks() -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = ca_cert("other root", other_key)
    assert "issuer-mismatch" in errors(LEAF_DER, role="server", issuer=other)
    assert "issuer-mismatch" not in errors(LEAF_DER, role="server", issuer=ROOT)
    long_leaf = build(exts=[SAN], end=ROOT.not_valid_after_utc + dt.timedelta(days=1))
    assert "validity-exceeds-issuer" in warnings_(long_leaf, role="server", issuer=ROOT)
    # A chain file out of order fails like the device would.
    assert "issuer-mismatch" in errors(pem(ROOT, LEAF), role="server")


def test_pem_is_an_error_only_for_what_the_device_loads() -> None:
    assert "pem-not-der" in errors(pem(LEAF), role="client")
    assert "pem-not-der" in errors(pem(ROOT), role="ca")
    infos = [f for f in lint(pem(LEAF), role="server") if f.code == "pem-not-der"]
    assert infos and infos[0].severity == "info"


def test_strict_der() -> None:
    assert derlib.reencode(LEAF_DER) == LEAF_DER
    derlib.check_strict(LEAF_DER)
    # Same certificate, outer length in a non-minimal long form: BER, not DER.
    tlv = derlib.top(LEAF_DER)
    body = LEAF_DER[tlv.content_start :]
    n = len(body)
    ber = b"\x30\x83" + n.to_bytes(3, "big") + body
    assert derlib.reencode(ber) == LEAF_DER
    with pytest.raises(FormatError, match="not strict DER"):
        derlib.check_strict(ber)
    assert "not-strict-der" in errors(ber)
    # Indefinite length, constructed string, bad booleans: refused with an offset.
    for bad in (b"\x30\x80\x00\x00", b"\x24\x03\x04\x01\x00", b"\x01\x02\x00\x00"):
        with pytest.raises(FormatError):
            derlib.reencode(bad)
    with pytest.raises(FormatError, match="not strict DER"):
        derlib.check_strict(b"\x01\x01\x01")  # BOOLEAN TRUE must be 0xFF
    with pytest.raises(FormatError, match="not strict DER"):
        derlib.check_strict(b"\x02\x02\x00\x01")  # non-minimal INTEGER


def test_the_device_certificate_message_size() -> None:
    many = x509.SubjectAlternativeName([x509.DNSName(f"{i}.{'n' * 50}.test") for i in range(80)])
    big = build(exts=[(many, False)])
    assert len(big) > 4096
    assert "cert-message-too-large" in errors(big, role="client")
    assert "cert-message-too-large" not in errors(big, role="server")


# --- hostile input -----------------------------------------------------------------------


def _never_raises(data: bytes) -> list[Finding]:
    for role in (None, "server", "client", "ca"):
        findings = lint(data, role=role, hostname="server.test", issuer=ROOT)
    return findings


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_give_a_clean_finding(data: bytes) -> None:
    findings = _never_raises(data)
    assert any(f.severity == "error" for f in findings)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(LEAF_DER) - 1), st.integers(0, 255)), min_size=1, max_size=6
    )
)
def test_mutated_certificates_never_raise(edits: list[tuple[int, int]]) -> None:
    data = bytearray(LEAF_DER)
    for pos, value in edits:
        data[pos] = value
    _never_raises(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(LEAF_DER) - 1), st.integers(0, 12), st.binary(max_size=12), st.booleans())
def test_spliced_certificates_never_raise(pos: int, cut: int, insert: bytes, as_pem: bool) -> None:
    data = LEAF_DER[:pos] + insert + LEAF_DER[pos + cut :]
    if as_pem:
        data = (
            b"-----BEGIN CERTIFICATE-----\n"
            + base64.encodebytes(data)
            + b"-----END CERTIFICATE-----\n"
        )
    _never_raises(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(LEAF_DER) - 1))
def test_truncated_certificates_give_a_clean_finding(n: int) -> None:
    findings = _never_raises(LEAF_DER[:n])
    assert "not-a-certificate" in {f.code for f in findings}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30" * 5000,
        b"\x30\x84\xff\xff\xff\xff",
        b"\x30\x81\x00",
        b"\x30\x80" * 100 + b"\x00\x00" * 100,
        b"\x30\x02" * 4000,
        b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMIIB\n",
        b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN CERTIFICATE-----\n" * 3000,
        "-----BEGIN CERTIFICATE-----\nö\n-----END CERTIFICATE-----\n".encode(),
        LEAF_DER + b"\x00",
        LEAF_DER + LEAF_DER,
    ],
    ids=[
        "empty",
        "nested-opens",
        "huge-length",
        "zero-long-length",
        "indefinite",
        "deep-nesting",
        "bad-base64",
        "no-end",
        "empty-block",
        "key-not-cert",
        "many-begins",
        "non-ascii",
        "trailing-byte",
        "two-der-certs",
    ],
)
def test_hostile_files(data: bytes) -> None:
    findings = _never_raises(data)
    assert {f.code for f in findings if f.severity == "error"} & {
        "not-a-certificate",
        "not-strict-der",
        "pem-not-der",
        "der-trailing-data",
    }


def test_a_der_file_with_two_certificates() -> None:
    findings = lint(LEAF_DER + der(ROOT), role="server", hostname="server.test", issuer=ROOT)
    assert {f.code for f in findings if f.severity == "error"} == {"der-trailing-data"}


def test_lint_file_limits_and_missing_files(tmp_path: Path) -> None:
    big = tmp_path / "big.der"
    big.write_bytes(b"\x00" * (1024 * 1024 + 1))
    findings = lint_file(big, LintOptions())
    assert [f.code for f in findings] == ["not-a-certificate"]
    assert "limit" in findings[0].message
    with pytest.raises(UsageError):
        lint_file(tmp_path / "missing.der", LintOptions())
