"""``cert anchor``: pick the one certificate a device trusts for a server it calls.

The device's mbedTLS context holds one DER trust anchor (``load_verify_locations
(cadata=...)``). Checked on the MicroPython unix port (tests/test_pki_tls.py): a root
works, an intermediate works, and a pinned leaf works only when it is self-signed:
mbedTLS treats an end-entity certificate as trusted only if it is self-issued.

A chain fetched from ``host:port`` is read without verification: whoever sits on the
network at that moment (T1) could hand over their own. The fingerprint is printed so
it can be compared with one obtained another way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import itertools
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mpseal.errors import FormatError, TransportError, UsageError
from mpseal.fsutil import read_limited
from mpseal.pki.files import DEFAULT_PKI_LIMITS, PkiLimits, cert_blobs, load_cert
from mpseal.pki.lint import (
    FOREIGN_ERRORS,
    Finding,
    LintOptions,
    hostname_matches,
    issue_problem,
    lint_cert,
)

AnchorMode = Literal["root", "intermediate", "leaf"]
SHORT_LIFE = dt.timedelta(days=365)
_HOSTPORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})")

TRADEOFFS: dict[AnchorMode, str] = {
    "root": "Trusts every certificate the root's CA issues for the name the device checks. "
    "Survives renewals of the server certificate and changes of intermediate; breaks "
    "only when the root expires or the server moves to another CA. With a public CA, "
    "anyone that CA validates for your host name can stand in for the server.",
    "intermediate": "Trusts only certificates from this intermediate: narrower than the root. "
    "Breaks when the CA issues from another intermediate; public CAs rotate "
    "intermediates (Let's Encrypt uses several) without notice, so ship an "
    "update path that does not depend on this connection.",
    "leaf": "Trusts exactly this self-signed server certificate: the narrowest. Breaks at the "
    "server's next certificate or key change; the device must be updated first.",
}


@dataclass(frozen=True)
class Anchor:
    cert: x509.Certificate
    mode: AnchorMode
    chain: list[x509.Certificate]  # as the server sends it, leaf first
    source: str
    warnings: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # lint errors of the anchor itself

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @property
    def tradeoff(self) -> str:
        return TRADEOFFS[self.mode]


def parse_hostport(text: str) -> tuple[str, int] | None:
    m = _HOSTPORT.fullmatch(text)
    if m is None:
        return None
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise UsageError(f"port {port} is out of range")
    return m.group(1).strip("[]"), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def fetch_chain(
    host: str, port: int, timeout: float = 10.0, limits: PkiLimits = DEFAULT_PKI_LIMITS
) -> list[x509.Certificate]:
    """The certificates the server sends, unverified (see the module docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=None if _is_ip(host) else host) as tls,
        ):
            ders = _unverified_chain(tls)
    except (OSError, ssl.SSLError) as e:
        raise TransportError(
            f"cannot fetch the certificate chain from {host}:{port}: {e}"
        ) from None
    if not ders:
        raise FormatError(f"{host}:{port} sent no certificate")
    if len(ders) > limits.chain_max_count:
        raise FormatError(f"{host}:{port} sent more than {limits.chain_max_count} certificates")
    return [load_cert(d, f"certificate {i + 1} from {host}:{port}") for i, d in enumerate(ders)]


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    public = getattr(tls, "get_unverified_chain", None)  # Python 3.13+
    if public is not None:
        return [bytes(d) for d in public()]
    certs = tls._sslobj.get_unverified_chain() or []  # type: ignore[attr-defined]
    return [c.public_bytes(2) for c in certs]  # 2 = _ssl.ENCODING_DER


def read_chain(path: Path, limits: PkiLimits = DEFAULT_PKI_LIMITS) -> list[x509.Certificate]:
    data = read_limited(path, limits.cert_file_max_length, "chain file")
    blobs = cert_blobs(data, limits)
    if not blobs:
        raise FormatError(f"{path} holds no certificate")
    if len(blobs) > limits.chain_max_count:
        raise FormatError(f"{path} holds more than {limits.chain_max_count} certificates")
    return [load_cert(b.der, f"certificate {i + 1} in {path}") for i, b in enumerate(blobs)]


def default_bundle() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def read_bundle(path: Path, limits: PkiLimits = DEFAULT_PKI_LIMITS) -> list[x509.Certificate]:
    """The parsable certificates of a CA bundle (a system store may hold odd ones: skipped)."""
    data = read_limited(path, limits.ca_bundle_max_length, "CA bundle")
    bigger = PkiLimits(pem_blocks_max_count=4096)
    return [b.cert for b in cert_blobs(data, bigger) if b.cert is not None]


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    return issue_problem(child, parent) is None


def self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and issued_by(cert, cert)


def find_root(top: x509.Certificate, bundle: list[x509.Certificate]) -> x509.Certificate | None:
    """The bundle's certificate that signed ``top``; the longest-lived if cross-signed."""
    found = [c for c in bundle if _named(c, top.issuer) and issued_by(top, c)]
    return max(found, key=lambda c: c.not_valid_after_utc, default=None)


def _named(cert: x509.Certificate, name: x509.Name) -> bool:
    try:
        return cert.subject == name
    except ValueError:  # a bundle's odd certificate with an unreadable name
        return False


def choose_anchor(
    chain: list[x509.Certificate],
    mode: AnchorMode,
    source: str,
    bundle: list[x509.Certificate] | None = None,
    hostname: str | None = None,
    now: dt.datetime | None = None,
) -> Anchor:
    now = now or dt.datetime.now(dt.UTC)
    warnings: list[str] = []
    for child, parent in itertools.pairwise(chain):
        if not issued_by(child, parent):
            warnings.append(
                f"the chain is out of order or broken at {child.subject.rfc4514_string()}"
                "; the device will fail to verify it"
            )
    leaf = chain[0]
    if mode == "leaf":
        if not self_signed(leaf):
            raise UsageError(
                "--pin-leaf needs a self-signed server certificate: mbedTLS trusts "
                "an end-entity certificate as an anchor only if it is self-issued. "
                "This one is issued by "
                + leaf.issuer.rfc4514_string()
                + "; use --intermediate or the root instead"
            )
        anchor = leaf
    elif mode == "intermediate":
        if len(chain) < 2 or self_signed(chain[1]):
            raise UsageError(f"{source} sends no intermediate after its leaf; use the root")
        anchor = chain[1]
    else:
        top = chain[-1]
        if self_signed(top):
            anchor = top
        else:
            root = find_root(top, bundle or [])
            if root is None:
                raise UsageError(
                    f"the chain from {source} ends at a certificate issued by "
                    f"{top.issuer.rfc4514_string()}, which is neither in the chain "
                    "nor in the CA bundle; give --ca-bundle with that root, or use "
                    "--intermediate"
                )
            anchor = root
    end = anchor.not_valid_after_utc
    if end < now:
        raise UsageError(
            f"the {mode} anchor expired on {end:%Y-%m-%d}; the device would reject every connection"
        )
    if end - now < SHORT_LIFE:
        warnings.append(
            f"the anchor expires {end:%Y-%m-%d}, in {(end - now).days} days: devices "
            "need a new anchor before then"
        )
    if hostname is not None and not _names(leaf, hostname):
        warnings.append(
            f"the server's certificate does not name {hostname!r}; the device will "
            "refuse it with that server_hostname"
        )
    findings = [
        f
        for f in lint_cert(
            anchor,
            "server" if mode == "leaf" else "ca",
            "anchor",
            LintOptions(hostname=hostname if mode == "leaf" else None, device_clock=now, now=now),
        )
        if f.severity == "error"
    ]
    return Anchor(anchor, mode, chain, source, warnings, findings)


def _names(leaf: x509.Certificate, hostname: str) -> bool:
    try:
        return hostname_matches(leaf, hostname)
    except FOREIGN_ERRORS:
        return False
