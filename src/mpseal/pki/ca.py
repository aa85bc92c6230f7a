"""A product's own certificate authority: an offline root and an online issuing CA.

Layout of a CA folder (``mpseal ca init DIR``)::

    offline/root-key.pem   root key, 0600 in a 0700 folder: move it off this machine (T2)
    root.pem  root.der     root certificate: the trust anchor devices and servers load
    issuing-key.pem        issuing CA key, 0600: signs device and server certificates
    issuing.pem issuing.der
    ca-chain.pem           issuing + root: what a server loads to check device certificates

Both keys are ECDSA P-256. Both certificates are v3 with critical basicConstraints and
keyUsage, and no nameConstraints: the device's mbedTLS refuses critical nameConstraints.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.errors import ConfigError, UsageError
from mpseal.fsutil import all_or_nothing, read_limited, storage_error
from mpseal.pki.files import read_certs, write_key, write_public
from mpseal.pki.signer import (
    CertSigner,
    PassphraseCallback,
    SignerCertSigner,
    is_encrypted_pem,
    load_file_signer,
    sign_certificate,
)

ROOT_KEY = "offline/root-key.pem"
ISSUING_KEY = "issuing-key.pem"
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CaOptions:
    name: str = "mpseal fleet"
    organization: str | None = None
    root_days: int = 20 * 365
    issuing_days: int = 10 * 365


@dataclass(frozen=True)
class CaInitResult:
    folder: Path
    root: x509.Certificate
    issuing: x509.Certificate
    files: list[Path]


@dataclass(frozen=True)
class IssuingCa:
    """The issuing CA as loaded for ``cert issue``: its certificate, its signer, its root."""

    cert: x509.Certificate
    signer: CertSigner
    root: x509.Certificate


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_name(common_name: str, organization: str | None = None) -> x509.Name:
    if not common_name or len(common_name) > 64:
        raise UsageError("a common name must be 1 to 64 characters")
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:64]))
    return x509.Name(attrs)


def ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePublicKey,
    days: int,
    path_length: int,
    not_after_cap: dt.datetime | None = None,
) -> x509.CertificateBuilder:
    start = now() - CLOCK_SKEW
    end = start + dt.timedelta(days=days)
    if not_after_cap is not None and end > not_after_cap:
        raise UsageError(
            f"the CA would outlive its issuer (which expires {not_after_cap:%Y-%m-%d})"
            "; give fewer days"
        )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
        )
    )


def init_ca(folder: Path, options: CaOptions, passphrase: bytes | None = None) -> CaInitResult:
    """Create the root and issuing CA in ``folder``; refuses if any of their files exists."""
    folder = Path(folder)
    names = [
        ROOT_KEY,
        "root.pem",
        "root.der",
        ISSUING_KEY,
        "issuing.pem",
        "issuing.der",
        "ca-chain.pem",
    ]
    for existing in (folder / n for n in names):
        if existing.exists():
            raise UsageError(
                f"{existing} already exists; refusing to overwrite a CA (choose another folder)"
            )
    if options.issuing_days > options.root_days:
        raise UsageError("the issuing CA cannot outlive the root; lower --issuing-days")
    root_key, issuing_key = PrivateKeySigner.generate(), PrivateKeySigner.generate()
    root_signer = SignerCertSigner(root_key)
    org = options.organization
    root_name = make_name(f"{options.name} root CA"[:64], org)
    root_pub = root_key.public_key.to_crypto()
    root = sign_certificate(
        ca_builder(root_name, root_name, root_pub, root_pub, options.root_days, 1), root_signer
    )
    issuing_pub = issuing_key.public_key.to_crypto()
    issuing = sign_certificate(
        ca_builder(
            make_name(f"{options.name} issuing CA"[:64], org),
            root_name,
            issuing_pub,
            root_pub,
            options.issuing_days,
            0,
            root.not_valid_after_utc,
        ),
        root_signer,
    )
    pem = {c: c.public_bytes(Encoding.PEM) for c in (root, issuing)}
    outputs = [
        (ROOT_KEY, root_key.to_pem(passphrase), write_key),
        (ISSUING_KEY, issuing_key.to_pem(passphrase), write_key),
        ("root.pem", pem[root], write_public),
        ("root.der", root.public_bytes(Encoding.DER), write_public),
        ("issuing.pem", pem[issuing], write_public),
        ("issuing.der", issuing.public_bytes(Encoding.DER), write_public),
        ("ca-chain.pem", pem[issuing] + pem[root], write_public),
    ]
    # A full disk half-way leaves no half-made CA behind.
    with all_or_nothing(folder / "offline") as written:
        try:
            (folder / "offline").mkdir(parents=True, exist_ok=True)
            (folder / "offline").chmod(0o700)
        except OSError as e:
            raise storage_error(folder / "offline", e) from None
        for name, data, write in outputs:
            write(folder / name, data)
            written.append(folder / name)
    return CaInitResult(folder, root, issuing, [folder / n for n in names])


def load_issuing_ca(folder: Path, passphrase: PassphraseCallback | None = None) -> IssuingCa:
    """The issuing CA of ``folder``, checked: its key matches its certificate, the root signed it."""
    folder = Path(folder)
    if not (folder / "issuing.pem").exists():
        raise ConfigError(
            f"{folder} is not an mpseal CA folder (no issuing.pem); run 'mpseal ca init' first"
        )
    issuing = read_certs(folder / "issuing.pem", "issuing CA certificate")[0]
    root = read_certs(folder / "root.pem", "root CA certificate")[0]
    signer = load_file_signer(folder / ISSUING_KEY, "issuing CA", passphrase)
    cert_key = issuing.public_key()
    if not isinstance(cert_key, ec.EllipticCurvePublicKey):
        raise ConfigError(
            f"{folder / 'issuing.pem'} does not hold an EC key; mpseal CAs are ECDSA P-256"
        )
    if signer.public_key.public_numbers() != cert_key.public_numbers():
        if (folder / ("issuing.pem" + NEXT)).exists():
            raise ConfigError(
                f"an 'mpseal ca rotate' of {folder} was interrupted; run it again to finish it"
            )
        raise ConfigError(f"{folder / ISSUING_KEY} does not belong to {folder / 'issuing.pem'}")
    try:
        issuing.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"issuing.pem is not signed by root.pem in {folder}") from None
    return IssuingCa(issuing, signer, root)


RETIRED = "retired"
NEXT = ".next"  # a rotation writes these first, then moves them into place


@dataclass(frozen=True)
class RotateResult:
    folder: Path
    old: x509.Certificate
    new: x509.Certificate
    chain: list[x509.Certificate]  # what ca-chain.pem now lists: issuing CAs, then the root


def _retired_certs(folder: Path, at: dt.datetime) -> list[x509.Certificate]:
    """Retired issuing CAs still valid at ``at``: servers keep accepting their devices."""
    found = []
    for path in sorted((folder / RETIRED).glob("issuing-*.pem")):
        cert = read_certs(path, "retired issuing CA certificate")[0]
        if cert.not_valid_after_utc > at:
            found.append(cert)
    return found


def rotate_issuing_ca(
    folder: Path, days: int | None = None, passphrase: PassphraseCallback | None = None
) -> RotateResult:
    """A new issuing CA under the same root; the old one is retired, not forgotten.

    Devices anchor on the root, so they accept servers from either issuing CA at once.
    Servers must accept device certificates from both until every device renewed:
    ``ca-chain.pem`` lists the new issuing CA, every retired one still valid, and the
    root. The old issuing key is deleted (its theft is usually why one rotates): what it
    signed stays valid until it expires or the device is revoked on the server (T2).

    Crash-safe: the new key and certificate are written beside the old ones as
    ``*.next`` first, then moved into place; an interrupted rotation is finished by
    running it again (``load_issuing_ca`` says so meanwhile)."""
    folder = Path(folder)
    if not (folder / ROOT_KEY).exists():
        raise ConfigError(
            f"the root key {folder / ROOT_KEY} is not here: bring it back from "
            "offline storage for the rotation, then remove it again"
        )
    root = read_certs(folder / "root.pem", "root CA certificate")[0]
    root_signer = load_file_signer(folder / ROOT_KEY, "root CA", passphrase)
    if root_signer.public_key != root.public_key():
        raise ConfigError(f"{folder / ROOT_KEY} does not belong to {folder / 'root.pem'}")
    old = read_certs(folder / "issuing.pem", "issuing CA certificate")[0]
    next_key, next_cert = folder / (ISSUING_KEY + NEXT), folder / ("issuing.pem" + NEXT)
    staged = read_certs(next_cert, "new issuing CA certificate")[0] if next_cert.exists() else None
    if staged is not None and (next_key.exists() or _key_matches(folder, staged, passphrase)):
        new = staged  # an interrupted rotation: finish it
    else:
        for stale in (next_key, next_cert):
            stale.unlink(missing_ok=True)
        issuing_days = days or (old.not_valid_after_utc - old.not_valid_before_utc).days
        key = PrivateKeySigner.generate()
        new_pub = key.public_key.to_crypto()
        root_pub = root.public_key()
        assert isinstance(root_pub, ec.EllipticCurvePublicKey)
        new = sign_certificate(
            ca_builder(
                old.subject,
                root.subject,
                new_pub,
                root_pub,
                issuing_days,
                0,
                root.not_valid_after_utc,
            ),
            root_signer,
        )
        encrypted = is_encrypted_pem(read_limited(folder / ISSUING_KEY, 64 * 1024, "issuing key"))
        if encrypted and passphrase is None:
            raise ConfigError(
                "the issuing key is passphrase-protected, so the new one will be "
                "too: set MPSEAL_PASSPHRASE"
            )
        write_key(
            next_key, key.to_pem(passphrase("issuing CA") if passphrase and encrypted else None)
        )
        write_public(next_cert, new.public_bytes(Encoding.PEM))
    if old.serial_number != new.serial_number:
        write_public(
            folder / RETIRED / f"issuing-{old.serial_number:x}.pem", old.public_bytes(Encoding.PEM)
        )
    at = now()
    chain = [new] + [c for c in _retired_certs(folder, at) if c.serial_number != new.serial_number]
    write_public(
        folder / "ca-chain.pem", b"".join(c.public_bytes(Encoding.PEM) for c in [*chain, root])
    )
    write_public(folder / "issuing.der", new.public_bytes(Encoding.DER))
    if next_key.exists():
        os.replace(next_key, folder / ISSUING_KEY)  # the old key is gone from here on
    os.replace(next_cert, folder / "issuing.pem")
    return RotateResult(folder, old, new, [*chain, root])


def _key_matches(
    folder: Path, cert: x509.Certificate, passphrase: PassphraseCallback | None
) -> bool:
    try:
        signer = load_file_signer(folder / ISSUING_KEY, "issuing CA", passphrase)
    except ConfigError:
        return False
    return signer.public_key == cert.public_key()
