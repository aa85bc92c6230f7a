"""What MicroPython's mbedTLS accepts: the one model ``cert lint``, ``issue``, ``der`` share.

Sources: MicroPython's ``extmod/mbedtls/mbedtls_config_common.h`` (no PEM parser,
TLS 1.2, ``MBEDTLS_SSL_OUT_CONTENT_LEN`` 4096, ``IN_CONTENT_LEN`` 16384), mbedTLS's
default X.509 profile (SHA-256 and up, RSA >= 2048), and experiments with the unix
port in ``tests/test_pki_tls.py`` (a 4086-byte client certificate is sent, 4087 bytes
fails with ``MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

OUT_CONTENT_LEN = 4096  # what the device can send in one record: its Certificate message
IN_CONTENT_LEN = 16384  # what it can receive: the server's Certificate message
RSA_MIN_BITS = 2048
GOOD_CURVES = ("secp256r1", "secp384r1")  # P-521: works, with a warning

# Clock a board reads at boot until NTP or an RTC sets it.
UNSET_CLOCKS: dict[str, dt.datetime] = {
    "esp32": dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    "rp2": dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
}

# Extensions mbedTLS 3.6 parses; any other one marked critical makes it reject the cert.
KNOWN_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    x509.ObjectIdentifier("2.16.840.1.113730.1.1"),  # Netscape cert type
}


MAX_INTERMEDIATES = 8  # MBEDTLS_X509_MAX_INTERMEDIATE_CA: a 9th fails the verification
PEM_SINCE = (1, 29, 0)  # first release with PR #19569 (PEM parser in the common config)


@dataclass(frozen=True)
class Firmware:
    """What a firmware's mbedTLS parses, as far as certificates go."""

    label: str
    pem: bool  # PEM files, and several PEM certificates in one CA bundle


DER_ONLY = Firmware("MicroPython before PR #19569 (v1.28 and older)", pem=False)


def firmware(spec: str) -> Firmware:
    """``1.28``, ``v1.29.0``, ``1.29.0-preview`` or ``esp32`` (ESP-IDF's mbedTLS has PEM).

    A preview build is taken to predate the PR: the v1.29.0-preview unix port used by
    the tests parses no PEM. Raises ValueError with a readable message."""
    text = spec.strip().lower()
    if text == "esp32":
        return Firmware("ESP32 firmware (ESP-IDF's mbedTLS configuration)", pem=True)
    core, _, suffix = text.lstrip("v").partition("-")
    try:
        parts = tuple(int(p) for p in core.split("."))
    except ValueError:
        parts = ()
    if not 2 <= len(parts) <= 3:
        raise ValueError(
            f"firmware {spec!r} is not a MicroPython version like 1.28 or 1.29.0, nor 'esp32'"
        )
    version = (parts + (0,))[:3]
    pem = version > PEM_SINCE or (version == PEM_SINCE and not suffix)
    return Firmware(
        f"MicroPython {'.'.join(map(str, version))}{'-' + suffix if suffix else ''}", pem=pem
    )


def certificate_message_length(ders: list[bytes]) -> int:
    """Bytes of a TLS 1.2 Certificate handshake message carrying ``ders``."""
    return 4 + 3 + sum(3 + len(d) for d in ders)


def key_problem(key: object) -> tuple[str, str, str] | None:
    """``(severity, code, reason)`` if the device has trouble with this key, else None."""
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        name = key.curve.name
        if name == "secp521r1":
            return (
                "warning",
                "key-curve",
                "EC curve P-521: MicroPython's own mbedTLS build "
                "accepts it (checked on the unix port), but it is several times slower than "
                "P-256 on a microcontroller and not in every vendor configuration",
            )
        if name not in GOOD_CURVES:
            return (
                "error",
                "key-curve",
                f"EC curve {name}: the device's mbedTLS offers only "
                "the NIST curves in TLS 1.2 (the handshake fails with no shared cipher)",
            )
        return None
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        if key.key_size < RSA_MIN_BITS:
            return (
                "error",
                "rsa-key-size",
                f"RSA-{key.key_size}: mbedTLS's default profile refuses RSA below 2048 bits",
            )
        return None
    kind = type(key).__name__.replace("PublicKey", "").replace("PrivateKey", "").lstrip("_")
    return (
        "error",
        "key-type",
        f"{kind or 'this'} key: the device's mbedTLS cannot use it "
        "(no Ed25519, Ed448, DSA or X25519)",
    )
