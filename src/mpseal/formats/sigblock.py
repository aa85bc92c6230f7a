"""The signature block shared by every signed mpseal document.

    count × ( keyid: 32 bytes = SHA-256 of the signer's 65-byte public point
              sig:   64 bytes = ECDSA P-256 r || s, big-endian )

The count itself is stored by the container (artifact header or envelope).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpseal.crypto.keys import SIGNATURE_LENGTH, Signer
from mpseal.errors import FormatError

KEYID_LENGTH = 32
ENTRY_LENGTH = KEYID_LENGTH + SIGNATURE_LENGTH


@dataclass(frozen=True)
class SignatureEntry:
    keyid: str  # hex
    signature: bytes


def sign_all(signers: list[Signer], payload: bytes) -> list[SignatureEntry]:
    return [SignatureEntry(s.public_key.keyid, s.sign(payload)) for s in signers]


def encode(entries: list[SignatureEntry]) -> bytes:
    out = bytearray()
    for e in entries:
        out += bytes.fromhex(e.keyid)
        out += e.signature
    return bytes(out)


def decode(data: bytes, count: int) -> list[SignatureEntry]:
    if len(data) != count * ENTRY_LENGTH:
        raise FormatError(
            f"signature block is {len(data)} bytes, expected {count * ENTRY_LENGTH} for {count}"
        )
    entries = []
    for i in range(count):
        chunk = data[i * ENTRY_LENGTH : (i + 1) * ENTRY_LENGTH]
        entries.append(SignatureEntry(chunk[:KEYID_LENGTH].hex(), bytes(chunk[KEYID_LENGTH:])))
    return entries
