"""Leaf certificates (servers and devices), CSRs for public CAs, and PEM -> DER for the device.

A leaf is ECDSA P-256 with a key generated here (written 0600, never replaced) or
the public key of a CSR whose signature proves the requester holds the key. The
names in a certificate always come from the operator's command line, never from
the CSR. Validity: servers 397 days (what public CAs allow), devices 5 years; never
beyond the issuing CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from mpseal.errors import ConfigError, FormatError, SignatureError, UsageError
from mpseal.fsutil import read_limited
from mpseal.pki import device
from mpseal.pki.ca import CLOCK_SKEW, IssuingCa, make_name, now
from mpseal.pki.files import (
    DEFAULT_PKI_LIMITS,
    PemBlock,
    load_cert,
    looks_like_pem,
    pem_blocks,
    safe_stem,
    write_key,
    write_public,
)
from mpseal.pki.signer import PassphraseCallback, is_encrypted_pem, sign_certificate

Role = Literal["server", "client"]
DEFAULT_DAYS: dict[str, int] = {"server": 397, "client": 5 * 365}
_HOSTNAME = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
PRIVATE_KEY_LABELS = ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY")


@dataclass(frozen=True)
class LeafRequest:
    name: str  # the subject common name: a host name or a device id
    role: Role
    sans: tuple[str, ...] = ()  # "DNS:host", "IP:addr" or a bare host/address
    days: int | None = None
    organization: str | None = None
    not_before: dt.datetime | None = None  # default: now minus a little clock skew


@dataclass
class WrittenFiles:
    files: dict[str, Path] = field(default_factory=dict)  # kind -> path


def parse_san(text: str) -> x509.GeneralName:
    if text[:4].upper() == "DNS:":
        kind, value = "DNS", text[4:]
    elif text[:3].upper() == "IP:":
        kind, value = "IP", text[3:]
    else:
        kind, value = "", text
    if kind in ("", "IP"):
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            if kind == "IP":
                raise UsageError(f"{value!r} is not an IP address") from None
    if len(value) > 253 or not _HOSTNAME.fullmatch(value):
        raise UsageError(
            f"{value!r} is not a host name (letters, digits, '-', '.', an optional leading '*.')"
        )
    return x509.DNSName(value.lower())


def subject_alt_names(req: LeafRequest) -> list[x509.GeneralName]:
    sans = [parse_san(s) for s in req.sans]
    if not sans and req.role == "server":
        sans = [parse_san(req.name)]
    return sans


def check_device_key(key: object, what: str) -> None:
    problem = device.key_problem(key)
    if problem and problem[0] == "error":
        raise UsageError(f"{what}: {problem[2]}")


def leaf_builder(
    ca: IssuingCa, req: LeafRequest, public_key: CertificatePublicKeyTypes
) -> x509.CertificateBuilder:
    days = req.days if req.days is not None else DEFAULT_DAYS[req.role]
    if days < 1:
        raise UsageError("validity must be at least one day")
    start = req.not_before or now() - CLOCK_SKEW
    end = start + dt.timedelta(days=days)
    ca_end = ca.cert.not_valid_after_utc
    if end > ca_end:
        left = (ca_end - start).days
        raise UsageError(
            f"the issuing CA expires {ca_end:%Y-%m-%d}; a certificate must not "
            f"outlive it: give --days {left} or less, or rotate the issuing CA"
        )
    is_ec = isinstance(public_key, ec.EllipticCurvePublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(make_name(req.name, req.organization))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not is_ec,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [
                    ExtendedKeyUsageOID.SERVER_AUTH
                    if req.role == "server"
                    else ExtendedKeyUsageOID.CLIENT_AUTH
                ]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.signer.public_key), critical=False
        )
    )
    sans = subject_alt_names(req)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder


def issue(
    ca: IssuingCa, req: LeafRequest, public_key: CertificatePublicKeyTypes
) -> x509.Certificate:
    check_device_key(public_key, "the certificate's key")
    return sign_certificate(leaf_builder(ca, req, public_key), ca.signer)


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem_der(key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    fmt, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    return (
        key.private_bytes(serialization.Encoding.PEM, fmt, none),
        key.private_bytes(serialization.Encoding.DER, fmt, none),
    )


def read_csr(path: Path) -> x509.CertificateSigningRequest:
    """A CSR from a file, with its self-signature checked (the requester holds the key)."""
    data = read_limited(path, DEFAULT_PKI_LIMITS.cert_max_length, "CSR")
    try:
        csr = x509.load_pem_x509_csr(data) if looks_like_pem(data) else x509.load_der_x509_csr(data)
        valid = csr.is_signature_valid
    except ValueError as e:
        raise FormatError(f"{path} is not a certificate signing request: {e}") from None
    if not valid:
        raise SignatureError(f"the CSR {path} is not signed by its own key; refusing it")
    return csr


def make_csr(
    name: str, sans: tuple[str, ...], organization: str | None, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateSigningRequest:
    names = [parse_san(s) for s in sans]
    if not names and _HOSTNAME.fullmatch(name):
        names = [parse_san(name)]
    builder = x509.CertificateSigningRequestBuilder().subject_name(make_name(name, organization))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


def leaf_paths(out: Path, stem: str) -> dict[str, Path]:
    stem = safe_stem(stem)
    return {
        "cert_pem": out / f"{stem}.pem",
        "cert_der": out / f"{stem}.der",
        "chain_pem": out / f"{stem}-chain.pem",
        "key_pem": out / f"{stem}.key.pem",
        "key_der": out / f"{stem}.key.der",
        "csr_pem": out / f"{stem}.csr.pem",
    }


def refuse_existing(paths: list[Path]) -> None:
    for p in paths:
        if p.exists():
            raise UsageError(
                f"{p} already exists; refusing to overwrite it (move it away, "
                "or choose another --file-stem)"
            )


def write_leaf(
    paths: dict[str, Path],
    cert: x509.Certificate,
    ca: IssuingCa,
    key: ec.EllipticCurvePrivateKey | None,
    force: bool,
) -> dict[str, Path]:
    """Write cert (PEM, DER), chain (leaf + issuing CA) and, if generated here, the key."""
    cert_kinds = ["cert_pem", "cert_der", "chain_pem"]
    key_kinds = ["key_pem", "key_der"] if key is not None else []
    refuse_existing([paths[k] for k in key_kinds + ([] if force else cert_kinds)])
    if key is not None:
        key_pem, key_der = key_pem_der(key)
        write_key(paths["key_pem"], key_pem)
        write_key(paths["key_der"], key_der)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    write_public(paths["cert_pem"], pem)
    write_public(paths["cert_der"], cert.public_bytes(serialization.Encoding.DER))
    write_public(paths["chain_pem"], pem + ca.cert.public_bytes(serialization.Encoding.PEM))
    return {k: paths[k] for k in key_kinds + cert_kinds}


def write_csr(
    paths: dict[str, Path], csr: x509.CertificateSigningRequest, key: ec.EllipticCurvePrivateKey
) -> dict[str, Path]:
    kinds = ["key_pem", "key_der", "csr_pem"]
    refuse_existing([paths[k] for k in kinds])
    key_pem, key_der = key_pem_der(key)
    write_key(paths["key_pem"], key_pem)
    write_key(paths["key_der"], key_der)
    write_public(paths["csr_pem"], csr.public_bytes(serialization.Encoding.PEM))
    return {k: paths[k] for k in kinds}


# --- PEM -> DER for the device -------------------------------------------------------------


@dataclass(frozen=True)
class DerOutput:
    path: Path
    kind: Literal["certificate", "private key"]
    subject: str
    written: bool  # False: an identical key file was already there


def load_private_key(
    block: PemBlock, passphrase: PassphraseCallback | None, what: str
) -> PrivateKeyTypes:
    secret = None
    if is_encrypted_pem(block.text):
        if passphrase is None:
            raise ConfigError(f"{what} is passphrase-protected; set MPSEAL_PASSPHRASE")
        secret = passphrase(what)
    try:
        return serialization.load_pem_private_key(block.text, password=secret)
    except TypeError:
        raise ConfigError(f"{what}: a passphrase was given but the key is not encrypted") from None
    except ValueError:
        raise ConfigError(f"cannot load {what}: wrong passphrase or not a private key") from None
    except UnsupportedAlgorithm:
        raise FormatError(f"cannot load {what}: an unsupported key algorithm") from None


def _key_der(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_to_der(
    src: Path, out: Path, passphrase: PassphraseCallback | None = None
) -> list[DerOutput]:
    """One DER file per certificate (``stem.der`` or ``stem-1.der``...) and per private key.

    Private keys come out unencrypted (the device's mbedTLS gets no passphrase), 0600,
    never replacing a different key.
    """
    data = read_limited(src, DEFAULT_PKI_LIMITS.cert_file_max_length, "PEM file")
    if not looks_like_pem(data):
        raise UsageError(f"{src} is not PEM (already DER?); the device loads DER as is")
    blocks = pem_blocks(data)
    certs = [b for b in blocks if b.label in ("CERTIFICATE", "TRUSTED CERTIFICATE")]
    keys = [b for b in blocks if b.label in PRIVATE_KEY_LABELS]
    if not certs and not keys:
        raise UsageError(f"{src} holds no certificate and no private key")
    stem = safe_stem(src.name.removesuffix(".pem").removesuffix(".crt").removesuffix(".cer"))
    outputs: list[DerOutput] = []
    for i, block in enumerate(keys):
        key = load_private_key(block, passphrase, f"the private key in {src}")
        check_device_key(key, f"the private key in {src}")
        suffix = "" if len(keys) == 1 else f"-{i + 1}"
        path = out / f"{stem.removesuffix('.key')}{suffix}.key.der"
        key_der = _key_der(key)
        same = path.exists() and path.read_bytes() == key_der
        if not same:
            write_key(path, key_der)
        outputs.append(DerOutput(path, "private key", "", not same))
    for i, block in enumerate(certs):
        cert = load_cert(block.der, f"certificate {i + 1} in {src}")
        suffix = "" if len(certs) == 1 else f"-{i + 1}"
        path = out / f"{stem}{suffix}.der"
        write_public(path, cert.public_bytes(serialization.Encoding.DER))
        outputs.append(DerOutput(path, "certificate", cert.subject.rfc4514_string(), True))
    return outputs
