"""``cert expiry``: every certificate under some folders, soonest expiry first.

The same certificate stored as ``.pem`` and ``.der`` (or inside chains) is one entry
with all its files. Files that are not certificates (keys, CSRs, other data) are
skipped; files that look like certificates but do not parse are reported.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mpseal.errors import FormatError, UsageError
from mpseal.fsutil import read_limited
from mpseal.pki.files import DEFAULT_PKI_LIMITS, PkiLimits, cert_blobs, looks_like_pem

SUFFIXES = (".pem", ".der", ".crt", ".cer")


@dataclass
class ExpiryEntry:
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool
    sha256: str
    files: list[str] = field(default_factory=list)

    def days_left(self, now: dt.datetime) -> int:
        return (self.not_after - now).days

    def to_dict(self, now: dt.datetime) -> dict[str, object]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "is_ca": self.is_ca,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "days_left": self.days_left(now),
            "expired": self.not_after < now,
            "sha256": self.sha256,
            "files": self.files,
        }


@dataclass
class ExpiryReport:
    entries: list[ExpiryEntry]
    skipped: list[tuple[str, str]]  # (file, why)


def _files(folders: list[Path], limits: PkiLimits) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"{folder} is not a folder")
        for top, dirs, names in os.walk(folder, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                if name.lower().endswith(SUFFIXES):
                    found.append(Path(top) / name)
                    if len(found) > limits.scan_files_max_count:
                        raise UsageError(
                            f"more than {limits.scan_files_max_count} certificate "
                            "files; point at a smaller folder"
                        )
    return found


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
        return False


def scan(folders: list[Path], limits: PkiLimits = DEFAULT_PKI_LIMITS) -> ExpiryReport:
    by_hash: dict[str, ExpiryEntry] = {}
    skipped: list[tuple[str, str]] = []
    for path in _files(folders, limits):
        try:
            data = read_limited(path, limits.cert_file_max_length, "certificate file")
            blobs = cert_blobs(data, limits)
        except FormatError as e:
            skipped.append((str(path), str(e)))
            continue
        if looks_like_pem(data) and not blobs:
            continue  # a key or a CSR, not a certificate
        for blob in blobs:
            if blob.cert is None:
                if looks_like_pem(data):
                    skipped.append((str(path), blob.error or "not a certificate"))
                continue  # a .der that is a key, say
            digest = hashlib.sha256(blob.cert.public_bytes(Encoding.DER)).hexdigest()
            entry = by_hash.get(digest)
            if entry is None:
                c = blob.cert
                try:
                    entry = ExpiryEntry(
                        c.subject.rfc4514_string(),
                        c.issuer.rfc4514_string(),
                        c.not_valid_before_utc,
                        c.not_valid_after_utc,
                        _is_ca(c),
                        digest,
                    )
                except ValueError as e:
                    skipped.append((str(path), f"unreadable certificate: {e}"))
                    continue
                by_hash[digest] = entry
            if str(path) not in entry.files:
                entry.files.append(str(path))
    entries = sorted(by_hash.values(), key=lambda e: (e.not_after, e.subject))
    return ExpiryReport(entries, skipped)
