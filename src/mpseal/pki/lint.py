"""``cert lint``: will this certificate work in MicroPython's mbedTLS? Say what breaks and why.

Each finding names a stable ``code`` (scripts and tests match on it, never on text),
what is wrong, what breaks on the device, and how to fix it. The linter reads
untrusted files: every failure to parse becomes a finding, never an exception.

Roles: ``server`` is a certificate the device verifies when it connects out;
``client`` is the device's own certificate (the server verifies it); ``ca`` is an
issuer or a trust anchor the device loads. Certificates after the first in a chain
file are linted as ``ca``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import (
    ExtendedKeyUsageOID,
    ExtensionOID,
    NameOID,
    SignatureAlgorithmOID,
)

from mpseal.errors import FormatError
from mpseal.fsutil import read_limited
from mpseal.pki import der, device
from mpseal.pki.files import (
    DEFAULT_PKI_LIMITS,
    CertBlob,
    PkiLimits,
    cert_blobs,
    looks_like_pem,
    parse_cert,
)

Severity = Literal["error", "warning", "info"]
Role = Literal["server", "client", "ca"]
ROLES: tuple[Role, ...] = ("server", "client", "ca")
# What cryptography raises on hostile certificates when a field is read lazily.
FOREIGN_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
EXPIRES_SOON = dt.timedelta(days=30)
T = TypeVar("T")


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    where: str  # "file" or "file [2: CN=...]"
    message: str  # what is wrong
    breaks: str  # what happens on the device
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class LintOptions:
    hostname: str | None = None
    role: Role | None = None  # None: inferred from the certificate
    issuer: x509.Certificate | None = None  # the issuing CA or the device's trust anchor
    device_clock: dt.datetime | None = None  # None: the device's clock is not set
    now: dt.datetime | None = None  # the real time (default: this host's clock)
    firmware: device.Firmware = device.DER_ONLY  # what the device's mbedTLS parses


@dataclass
class _Ctx:
    where: str
    out: list[Finding] = field(default_factory=list)

    def add(self, severity: Severity, code: str, message: str, breaks: str, fix: str) -> None:
        self.out.append(Finding(severity, code, self.where, message, breaks, fix))


def _guard(ctx: _Ctx, what: str, fn: Callable[[], T]) -> T | None:
    """Read a lazily parsed field; a hostile encoding becomes a finding, not a traceback."""
    try:
        return fn()
    except FOREIGN_ERRORS as e:
        ctx.add(
            "error",
            "malformed-field",
            f"cannot read the {what}: {e}",
            "mbedTLS refuses a certificate it cannot parse: loading or the handshake fails",
            "re-issue the certificate with a standard tool (mpseal cert issue)",
        )
        return None


# --- helpers -------------------------------------------------------------------------------


def _cn(cert: x509.Certificate) -> str:
    try:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else cert.subject.rfc4514_string() or "(no name)"
    except FOREIGN_ERRORS:
        return "(unreadable name)"


def _ext(cert: x509.Certificate, cls: type[T]) -> T | None:
    """The extension value of type ``cls`` or None; callers have read .extensions already."""
    for e in cert.extensions:
        if isinstance(e.value, cls):
            return e.value
    return None


def infer_role(cert: x509.Certificate) -> Role:
    try:
        bc = _ext(cert, x509.BasicConstraints)
        if bc is not None and bc.ca:
            return "ca"
        eku = _ext(cert, x509.ExtendedKeyUsage)
    except FOREIGN_ERRORS:
        return "server"
    if (
        eku is not None
        and ExtendedKeyUsageOID.CLIENT_AUTH in eku
        and ExtendedKeyUsageOID.SERVER_AUTH not in eku
    ):
        return "client"
    return "server"


def hostname_matches(cert: x509.Certificate, hostname: str) -> bool:
    """mbedTLS's rule: SAN dNSName (one leading ``*.`` label) or IP; the CN only without SAN."""
    host = hostname.lower()  # mbedTLS compares as given: "server.test." does not match
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is None:
        names = [
            str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
        return any(_dns_match(n, host) for n in names)
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    return any(_dns_match(n.lower(), host) for n in san.get_values_for_type(x509.DNSName))


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    return str(getattr(oid, "_name", oid.dotted_string))


def _dns_match(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def issue_problem(child: x509.Certificate, parent: x509.Certificate) -> str | None:
    """Why ``parent`` did not issue ``child`` (name or signature), or None if it did."""
    try:
        child.verify_directly_issued_by(parent)
    except InvalidSignature:
        return "its signature does not verify with the issuer's key"
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        return str(e) or type(e).__name__
    return None


# --- per-certificate checks ----------------------------------------------------------------


def _check_key(ctx: _Ctx, key: object, role: Role) -> None:
    if key is None:
        return
    problem = device.key_problem(key)
    if problem:
        severity, code, reason = problem
        breaks = (
            (
                "mbedTLS rejects the certificate when it is loaded or received: the TLS "
                "handshake fails"
            )
            if severity == "error"
            else "works, at a cost"
        )
        ctx.add(
            "error" if severity == "error" else "warning",
            code,
            reason,
            breaks,
            "issue it with an ECDSA P-256 key (mpseal cert issue)",
        )
    elif isinstance(key, rsa.RSAPublicKey) and role == "client":
        ctx.add(
            "info",
            "rsa-device-key",
            f"RSA-{key.key_size} device key",
            "works, but RSA signing on a microcontroller is far slower and the "
            "certificate larger than with P-256",
            "prefer ECDSA P-256 for device keys",
        )


def _check_signature(ctx: _Ctx, cert: x509.Certificate, role: Role, self_signed: bool) -> None:
    oid = cert.signature_algorithm_oid
    if oid in (SignatureAlgorithmOID.ED25519, SignatureAlgorithmOID.ED448):
        ctx.add(
            "error",
            "signature-algorithm",
            f"signed with {_oid_name(oid)}",
            "mbedTLS has no EdDSA: it cannot check this signature and rejects the chain",
            "sign with ECDSA P-256/SHA-256 (mpseal cert issue)",
        )
        return
    if oid == SignatureAlgorithmOID.RSASSA_PSS:
        ctx.add(
            "warning",
            "signature-algorithm",
            "signed with RSASSA-PSS",
            "MicroPython's own mbedTLS configuration leaves RSASSA-PSS out; ports using "
            "a vendor configuration (ESP-IDF) may have it",
            "sign with ECDSA P-256/SHA-256",
        )
        return
    try:
        md = cert.signature_hash_algorithm
    except FOREIGN_ERRORS:
        md = None
    if md is None:
        ctx.add(
            "error",
            "signature-algorithm",
            f"signature algorithm {oid.dotted_string}",
            "mbedTLS does not know it and rejects the chain",
            "sign with ECDSA P-256/SHA-256",
        )
        return
    if md.name in ("md5", "sha1", "sha224"):
        if self_signed and role == "ca":
            ctx.add(
                "info",
                "weak-signature-hash",
                f"self-signature uses {md.name.upper()}",
                "mbedTLS does not check a trust anchor's own signature, so this root still "
                "works as an anchor",
                "nothing needed; prefer a root signed with SHA-256",
            )
        else:
            ctx.add(
                "error",
                "weak-signature-hash",
                f"signed with {md.name.upper()}",
                "mbedTLS's default profile accepts only SHA-256 and stronger: verification fails",
                "re-issue it signed with SHA-256",
            )


def _check_extensions(ctx: _Ctx, cert: x509.Certificate, role: Role) -> bool:
    exts = _guard(ctx, "extensions", lambda: list(cert.extensions))
    if exts is None:
        return False
    for ext in exts:
        oid = ext.oid
        if oid in (ExtensionOID.NAME_CONSTRAINTS, ExtensionOID.POLICY_CONSTRAINTS):
            label = (
                "nameConstraints" if oid == ExtensionOID.NAME_CONSTRAINTS else "policyConstraints"
            )
            code = (
                "name-constraints" if oid == ExtensionOID.NAME_CONSTRAINTS else "policy-constraints"
            )
            if ext.critical:
                ctx.add(
                    "error",
                    code,
                    f"critical {label} extension",
                    f"mbedTLS does not implement {label} and rejects a certificate that "
                    "marks it critical: loading or the handshake fails",
                    f"issue the CA without {label}",
                )
            else:
                ctx.add(
                    "warning",
                    code,
                    f"non-critical {label} extension",
                    "mbedTLS ignores it: the constraint does not limit what the device accepts",
                    f"do not rely on {label} for the device",
                )
        elif ext.critical and oid not in device.KNOWN_EXTENSIONS:
            ctx.add(
                "error",
                "critical-extension-unknown",
                f"critical extension {_oid_name(oid)} ({oid.dotted_string})",
                "mbedTLS rejects certificates with critical extensions it does not know",
                "re-issue without it or mark it non-critical",
            )
        elif ext.critical and isinstance(ext.value, x509.CertificatePolicies):
            others = [p for p in ext.value if p.policy_identifier.dotted_string != "2.5.29.32.0"]
            if others:
                ctx.add(
                    "error",
                    "critical-certificate-policies",
                    "critical certificatePolicies with a policy other than anyPolicy",
                    "mbedTLS only understands anyPolicy in a critical certificatePolicies "
                    "extension and rejects the certificate",
                    "mark certificatePolicies non-critical",
                )
    return True


def _check_usage(ctx: _Ctx, cert: x509.Certificate, role: Role, key: object) -> None:
    bc = _ext(cert, x509.BasicConstraints)
    ku = _ext(cert, x509.KeyUsage)
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if role == "ca":
        if bc is None or not bc.ca:
            ctx.add(
                "error",
                "basic-constraints",
                "not a CA certificate (basicConstraints CA is missing or false)",
                "mbedTLS will not accept it as an issuer or trust anchor for other certificates",
                "use the CA's certificate, or re-issue it with basicConstraints CA:TRUE",
            )
        if ku is not None and not ku.key_cert_sign:
            ctx.add(
                "error",
                "key-usage",
                "CA keyUsage lacks keyCertSign",
                "mbedTLS refuses certificates signed by it",
                "re-issue the CA with keyCertSign",
            )
        return
    if bc is not None and bc.ca:
        ctx.add(
            "warning",
            "leaf-is-ca",
            "a leaf certificate marked CA:TRUE",
            "works, but anyone holding its key can issue certificates the device trusts",
            "issue leaves with CA:FALSE (mpseal cert issue)",
        )
    # The device negotiates only ECDHE suites: the server signs its key share (RSA keys
    # too: ECDHE-RSA), the device signs CertificateVerify. Both need digitalSignature;
    # keyEncipherment alone (static RSA key exchange) is refused (tests/test_pki_mbedtls.py).
    if ku is not None and not ku.digital_signature:
        side = (
            "the device refuses the server" if role == "server" else "the server refuses the device"
        )
        ctx.add(
            "error",
            "key-usage",
            "keyUsage lacks digitalSignature",
            f"the ECDHE key exchange the device uses needs it: {side}",
            "re-issue with keyUsage digitalSignature (mpseal cert issue)",
        )
    if eku is not None:
        want = (
            ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        if want not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            name = "serverAuth" if role == "server" else "clientAuth"
            side = "the device's mbedTLS" if role == "server" else "the server"
            ctx.add(
                "error",
                "ext-key-usage",
                f"extendedKeyUsage lacks {name}",
                f"{side} refuses it for a {role} certificate",
                f"re-issue with --role {role} (mpseal cert issue)",
            )


def _check_names(ctx: _Ctx, cert: x509.Certificate, role: Role, hostname: str | None) -> None:
    if role != "server":
        return
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is None:
        ctx.add(
            "warning",
            "san-missing",
            "no subjectAltName",
            "mbedTLS falls back to the common name, but most other clients and every "
            "public CA require a SAN",
            "re-issue with --san DNS:<host> (mpseal cert issue)",
        )
    if hostname is None:
        ctx.add(
            "info",
            "hostname-not-checked",
            "no --hostname given",
            "the device checks the name it connects to against the SAN",
            "pass --hostname with the name the device uses in server_hostname",
        )
    elif not _guard(ctx, "subject name", lambda: hostname_matches(cert, hostname)):
        ctx.add(
            "error",
            "hostname-mismatch",
            f"{hostname!r} is not among the certificate's names",
            "the device refuses the server: 'The certificate Common Name (CN) does "
            "not match with the expected CN'",
            f"re-issue with --san {hostname}, or connect "
            "with a server_hostname the certificate names",
        )


def _check_time(ctx: _Ctx, cert: x509.Certificate, role: Role, options: LintOptions) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    now = options.now or dt.datetime.now(dt.UTC)
    who = "the device refuses it" if role != "client" else "the server refuses the device"
    if now > end:
        ctx.add(
            "error",
            "expired",
            f"expired {end:%Y-%m-%d}",
            f"{who}: 'The certificate validity has expired'",
            "issue a new certificate (mpseal cert issue)",
        )
    elif now < start:
        ctx.add(
            "error",
            "not-yet-valid",
            f"valid only from {start:%Y-%m-%d %H:%M} UTC",
            f"{who} until then",
            "check the issuing host's clock and re-issue",
        )
    elif end - now < EXPIRES_SOON:
        ctx.add(
            "warning",
            "expires-soon",
            f"expires {end:%Y-%m-%d} ({(end - now).days} days)",
            f"after that, {who}",
            "renew it now (mpseal cert issue / your CA)",
        )
    if role == "client":
        return  # the device never checks the validity of its own certificate
    if options.device_clock is None:
        boards = [f"{b} reads {c:%Y-%m-%d}" for b, c in device.UNSET_CLOCKS.items() if c < start]
        if boards:
            ctx.add(
                "warning",
                "clock-unset",
                f"valid from {start:%Y-%m-%d}; a device whose "
                f"clock is not set ({', '.join(boards)}) is before that",
                "mbedTLS refuses the certificate as not yet valid until the clock is set: "
                "the first TLS connection after boot fails",
                "set the clock before any TLS connection (ntptime.settime() or an RTC); "
                "re-run with --device-clock YYYY-MM-DD to check a known date",
            )
        return
    clock = options.device_clock
    if clock < start:
        ctx.add(
            "error",
            "device-clock-before-validity",
            f"device clock {clock:%Y-%m-%d} is before notBefore {start:%Y-%m-%d}",
            "mbedTLS refuses it as not yet valid",
            "set the device's clock (NTP/RTC) before connecting",
        )
    elif clock > end:
        ctx.add(
            "error",
            "device-clock-after-validity",
            f"device clock {clock:%Y-%m-%d} is after notAfter {end:%Y-%m-%d}",
            "mbedTLS refuses it as expired",
            "renew the certificate or correct the device's clock",
        )


def lint_cert(
    cert: x509.Certificate, role: Role, where: str, options: LintOptions
) -> list[Finding]:
    ctx = _Ctx(where)
    self_signed = _guard(ctx, "names", lambda: cert.issuer == cert.subject) or False
    key = _guard(ctx, "public key", cert.public_key)
    _check_key(ctx, key, role)
    _check_signature(ctx, cert, role, self_signed)
    if _check_extensions(ctx, cert, role):
        _check_usage(ctx, cert, role, key)
        _check_names(ctx, cert, role, options.hostname if role == "server" else None)
    _check_time(ctx, cert, role, options)
    return ctx.out


# --- files and chains ----------------------------------------------------------------------


def _not_a_cert(ctx: _Ctx, message: str) -> None:
    ctx.add(
        "error",
        "not-a-certificate",
        message,
        "the device's load_cert_chain / load_verify_locations raises ValueError('invalid cert')",
        "give the certificate's DER file (mpseal cert der)",
    )


def _split_trailing(ctx: _Ctx, blob: CertBlob) -> CertBlob:
    """A DER file holding more than one element: the device reads the first, ignores the rest."""
    try:
        first = der.read_tlv(blob.der, 0, len(blob.der))
    except FormatError:
        return blob
    if first.end == len(blob.der):
        return blob
    ctx.add(
        "error",
        "der-trailing-data",
        f"{len(blob.der) - first.end} bytes follow the first DER element",
        "the device loads only the first certificate of a DER file and "
        "silently ignores the rest: a chain or a second anchor here has no effect",
        "one certificate per DER file (mpseal cert der CHAIN.pem)",
    )
    head = blob.der[: first.end]
    return CertBlob(head, blob.from_pem, *parse_cert(head))


def _check_encoding(ctx: _Ctx, blob: CertBlob) -> CertBlob | None:
    """Strict DER (re-encode and compare); the certificate to lint, or None if there is none."""
    if not blob.from_pem:
        blob = _split_trailing(ctx, blob)
    try:
        der.check_strict(blob.der)
    except FormatError as e:
        try:
            der.reencode(blob.der)
        except FormatError:
            _not_a_cert(ctx, f"not a DER certificate: {e}")
            return None
        ctx.add(
            "error",
            "not-strict-der",
            str(e),
            "the signature covers these exact bytes, so they cannot be repaired; mbedTLS "
            "and other verifiers reject BER encodings",
            "re-issue the certificate with a DER encoder (mpseal cert issue)",
        )
        return blob if blob.cert is not None else None
    if blob.cert is None:
        _not_a_cert(ctx, blob.error or "not an X.509 certificate")
        return None
    return blob


def _check_chain(
    ctx: _Ctx, certs: list[x509.Certificate], role: Role, issuer: x509.Certificate | None
) -> None:
    pairs = list(itertools.pairwise(certs))
    if issuer is not None and certs[-1] != issuer:
        pairs.append((certs[-1], issuer))
    for child, parent in pairs:
        problem = issue_problem(child, parent)
        if problem:
            ctx.add(
                "error",
                "issuer-mismatch",
                f"{_cn(child)!r} is not issued by {_cn(parent)!r}: {problem}",
                "the device's mbedTLS fails verification: "
                "'The certificate is not correctly signed by the trusted CA'",
                "give the device the anchor of the CA that issued it (mpseal cert anchor), "
                "or have the server send its intermediate",
            )
        if child.not_valid_after_utc > parent.not_valid_after_utc:
            ctx.add(
                "warning",
                "validity-exceeds-issuer",
                f"{_cn(child)!r} ends {child.not_valid_after_utc:%Y-%m-%d}, after its "
                f"issuer ({parent.not_valid_after_utc:%Y-%m-%d})",
                "the chain stops verifying when the issuer expires, whatever the leaf says",
                "rotate the issuer before then, or issue the leaf for a shorter time",
            )
    _check_path_length(
        ctx, certs + ([issuer] if issuer is not None and issuer not in certs else [])
    )
    if role == "server":
        inter = [c for c in certs[1:] if c.issuer != c.subject]
        if len(inter) > device.MAX_INTERMEDIATES:
            ctx.add(
                "error",
                "too-many-intermediates",
                f"{len(inter)} intermediate CAs",
                f"mbedTLS follows at most {device.MAX_INTERMEDIATES}: verification fails "
                "with MBEDTLS_ERR_X509_FATAL_ERROR",
                "send a shorter chain",
            )
    ders = [c.public_bytes(Encoding.DER) for c in certs]
    if role == "client":
        size = device.certificate_message_length(ders[:1])
        if size > device.OUT_CONTENT_LEN:
            ctx.add(
                "error",
                "cert-message-too-large",
                f"the device's Certificate message would be {size} bytes",
                f"it must fit mbedTLS's {device.OUT_CONTENT_LEN}-"
                "byte output buffer: the handshake fails with "
                "MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL",
                "use a P-256 key and fewer or shorter names/extensions",
            )
        if len(certs) > 1:
            ctx.add(
                "info",
                "device-sends-leaf-only",
                "the device presents only its leaf",
                "the server must hold the intermediate (ca-chain.pem) to verify devices",
                "configure the server's client-CA file with issuing + root",
            )
    elif role == "server":
        size = device.certificate_message_length(ders)
        if size > device.IN_CONTENT_LEN:
            ctx.add(
                "error",
                "cert-message-too-large",
                f"the server's Certificate message is {size} bytes",
                f"it exceeds mbedTLS's {device.IN_CONTENT_LEN}-byte input "
                "buffer: the handshake fails",
                "send a shorter chain (no root), smaller keys",
            )


def _check_path_length(ctx: _Ctx, chain: list[x509.Certificate]) -> None:
    """pathLenConstraint, as mbedTLS enforces it (the trust anchor's own included)."""
    for i, ca in enumerate(chain[1:], start=1):
        bc = _guard(ctx, "basicConstraints", partial(_ext, ca, x509.BasicConstraints))
        if bc is None or not bc.ca or bc.path_length is None:
            continue
        below = sum(1 for c in chain[1:i] if c.issuer != c.subject)
        if below > bc.path_length:
            ctx.add(
                "error",
                "path-length",
                f"{_cn(ca)!r} allows {bc.path_length} CA(s) "
                f"below it (pathLenConstraint); the chain has {below}",
                "mbedTLS refuses the chain: 'The certificate is not correctly signed by "
                "the trusted CA'",
                "issue the leaf from a CA higher up, or re-issue the "
                "CA with a larger pathLenConstraint",
            )


def _pem_finding(ctx: _Ctx, role: Role | None, name: str, firmware: device.Firmware) -> None:
    if firmware.pem and role != "server":
        ctx.add(
            "info",
            "pem-not-der",
            "PEM file",
            f"{firmware.label} parses PEM (and a PEM "
            "CA bundle): fine there, but the same file fails on firmware before "
            "MicroPython PR #19569",
            "use DER (mpseal cert der) for fleets of mixed firmware",
        )
        return
    if role == "server":
        ctx.add(
            "info",
            "pem-not-der",
            "PEM file",
            "fine for the server's own files: the "
            "device receives the server's certificates as DER during the handshake",
            "nothing for the device; convert files the device loads (mpseal cert der)",
        )
        return
    ctx.add(
        "error",
        "pem-not-der",
        "PEM file",
        "the device's mbedTLS has no PEM parser: "
        "load_cert_chain / load_verify_locations raise ValueError('invalid cert')",
        f"convert it: mpseal cert der {name}",
    )


def lint_bytes(
    data: bytes, name: str, options: LintOptions, limits: PkiLimits = DEFAULT_PKI_LIMITS
) -> list[Finding]:
    """Findings for one file's bytes; never raises for bad content."""
    with warnings.catch_warnings():  # cryptography warns about odd fields: findings say more
        warnings.simplefilter("ignore")
        return _lint_bytes(data, name, options, limits)


def _lint_bytes(data: bytes, name: str, options: LintOptions, limits: PkiLimits) -> list[Finding]:
    ctx = _Ctx(name)
    try:
        blobs = cert_blobs(data, limits)
    except FormatError as e:
        _pem_finding(ctx, options.role, name, options.firmware)
        _not_a_cert(ctx, str(e))
        return ctx.out
    certs: list[x509.Certificate] = []
    encoding: list[Finding] = []
    for i, blob in enumerate(blobs):
        sub = _Ctx(name if len(blobs) == 1 else f"{name} [{i + 1}]")
        usable = _check_encoding(sub, blob)
        if usable is not None and usable.cert is not None:
            certs.append(usable.cert)
        encoding.extend(sub.out)
    role = options.role or (infer_role(certs[0]) if certs else None)
    if looks_like_pem(data):
        _pem_finding(ctx, role, name, options.firmware)
    if not blobs:
        _not_a_cert(ctx, "no CERTIFICATE block in the PEM file")
        return ctx.out
    ctx.out.extend(encoding)
    if len(certs) != len(blobs) or role is None:
        return ctx.out
    if options.role is None:
        ctx.add(
            "info",
            "role-inferred",
            f"linted as a {role} certificate",
            "the checks depend on how the device uses it",
            "pass --role to choose",
        )
    for i, cert in enumerate(certs):
        where = name if len(certs) == 1 else f"{name} [{i + 1}: {_cn(cert)}]"
        ctx.out.extend(lint_cert(cert, role if i == 0 else "ca", where, options))
    _check_chain(ctx, certs, role, options.issuer)
    return ctx.out


def lint_file(
    path: Path, options: LintOptions, limits: PkiLimits = DEFAULT_PKI_LIMITS
) -> list[Finding]:
    """Findings for one file; a missing file is a ``UsageError``, bad content a finding."""
    try:
        data = read_limited(path, limits.cert_file_max_length, "certificate file")
    except FormatError as e:
        ctx = _Ctx(str(path))
        _not_a_cert(ctx, str(e))
        return ctx.out
    return lint_bytes(data, str(path), options, limits)


def counts(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
