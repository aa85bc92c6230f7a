"""Reading certificate and key files of unknown origin: PEM blocks, DER, limits, key output.

A PEM file is split into its blocks here (bounded count and size, strict base64) so
that callers see the exact DER each block holds and whether the input was PEM at all:
the device has no PEM parser, so that difference matters.
"""

from __future__ import annotations

import binascii
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from mpseal.errors import FormatError, UsageError
from mpseal.fsutil import read_limited, write_atomic

KEY_MODE = 0o600
CERT_MODE = 0o644


@dataclass(frozen=True)
class PkiLimits:
    """Bounds for certificate inputs (files, bundles, chains fetched from a server)."""

    cert_file_max_length: int = 1024 * 1024
    ca_bundle_max_length: int = 4 * 1024 * 1024
    pem_blocks_max_count: int = 512
    cert_max_length: int = 64 * 1024
    chain_max_count: int = 10
    scan_files_max_count: int = 10000


DEFAULT_PKI_LIMITS = PkiLimits()

_BEGIN = b"-----BEGIN "
_END = b"-----END "
_LABEL = re.compile(rb"([A-Z0-9 ]{1,40})-----\r?\n")


@dataclass(frozen=True)
class PemBlock:
    label: str  # "CERTIFICATE", "PRIVATE KEY", ...
    der: bytes
    text: bytes  # the whole block, for loaders that want PEM (encrypted keys)


def looks_like_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data[:4096]


def pem_blocks(data: bytes, limits: PkiLimits = DEFAULT_PKI_LIMITS) -> list[PemBlock]:
    """Every PEM block in ``data``, in one linear pass; a malformed block is a ``FormatError``."""
    blocks: list[PemBlock] = []
    pos = data.find(_BEGIN)
    while pos >= 0:
        if len(blocks) >= limits.pem_blocks_max_count:
            raise FormatError(f"more than {limits.pem_blocks_max_count} PEM blocks")
        m = _LABEL.match(data, pos + len(_BEGIN))
        if m is None:
            raise FormatError(f"malformed PEM BEGIN line at offset {pos}")
        label = m.group(1)
        end = data.find(_END, m.end())
        if end < 0 or not data.startswith(_END + label + b"-----", end):
            raise FormatError(f"PEM block {label.decode()} has no matching END line")
        body = data[m.end() : end]
        if b"\n\n" in body and b":" in body.split(b"\n\n", 1)[0]:
            body = body.split(b"\n\n", 1)[1]  # RFC 1421 headers (legacy encrypted keys)
        try:
            raw = binascii.a2b_base64(b"".join(body.split()), strict_mode=True)
        except (binascii.Error, ValueError):
            raise FormatError(f"PEM block {label.decode()} has invalid base64") from None
        stop = end + len(_END) + len(label) + 5
        blocks.append(PemBlock(label.decode("ascii"), raw, data[pos:stop]))
        pos = data.find(_BEGIN, stop)
    return blocks


@dataclass(frozen=True)
class CertBlob:
    """One certificate's bytes as found in a file, parsed if ``cryptography`` could."""

    der: bytes
    from_pem: bool
    cert: x509.Certificate | None
    error: str | None  # why ``cert`` is None


def parse_cert(raw: bytes) -> tuple[x509.Certificate | None, str | None]:
    try:
        with warnings.catch_warnings():  # e.g. negative serials: not our user's concern here
            warnings.simplefilter("ignore")
            return x509.load_der_x509_certificate(raw), None
    except (ValueError, x509.InvalidVersion) as e:
        return None, f"not an X.509 certificate: {e}"


def load_cert(raw: bytes, what: str) -> x509.Certificate:
    """A certificate whose names and extensions are readable (cryptography parses them lazily)."""
    cert, error = parse_cert(raw)
    if cert is None:
        raise FormatError(f"{what}: {error}")
    try:
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        list(cert.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise FormatError(f"{what}: malformed certificate field: {e}") from None
    return cert


def cert_blobs(data: bytes, limits: PkiLimits = DEFAULT_PKI_LIMITS) -> list[CertBlob]:
    """The certificates in a PEM (one or many blocks) or DER (exactly one) file's bytes."""
    if looks_like_pem(data):
        blocks = [
            b for b in pem_blocks(data, limits) if b.label in ("CERTIFICATE", "TRUSTED CERTIFICATE")
        ]
        return [CertBlob(b.der, True, *parse_cert(b.der)) for b in blocks]
    return [CertBlob(data, False, *parse_cert(data))]


def read_certs(
    path: Path, what: str = "certificate file", limits: PkiLimits = DEFAULT_PKI_LIMITS
) -> list[x509.Certificate]:
    """All certificates of a PEM or DER file; any unparsable one is a ``FormatError``."""
    data = read_limited(path, limits.cert_file_max_length, what)
    blobs = cert_blobs(data, limits)
    if not blobs:
        raise FormatError(f"{path} holds no certificate")
    return [load_cert(b.der, f"{path}") for b in blobs]


def safe_stem(name: str) -> str:
    """A file-name stem from a user-given name: letters, digits, ``.-_`` only, no leading dot."""
    stem = name.replace("*", "wildcard")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", stem):
        raise UsageError(
            f"{name!r} cannot be a file name; give --file-stem with letters, "
            "digits, '.', '-', '_' only"
        )
    return stem


def write_key(path: Path, data: bytes) -> None:
    """Private keys: 0600, never replacing an existing file."""
    write_atomic(path, data, mode=KEY_MODE, exclusive=True)


def write_public(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=CERT_MODE)
