"""Signed envelope: a small JSON payload and its signatures, in one binary file.

Layout (little-endian), nothing may follow the last signature:

    offset  size  field
    0       4     magic: names the document kind (b"MPSR" trust root, ...)
    4       1     format version = 1
    5       1     signature count (<= Limits.signatures_max_count)
    6       2     reserved, zero
    8       4     payload length (<= the kind's limit)
    12      n     payload: UTF-8 JSON object, signed as these exact bytes
    12+n    96×c  signature block (see sigblock.py)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mpseal.crypto.keys import Signer
from mpseal.errors import FormatError
from mpseal.formats import sigblock
from mpseal.formats.sigblock import SignatureEntry

_HEAD = struct.Struct("<4sBBHI")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Envelope:
    magic: bytes
    payload: bytes
    signatures: list[SignatureEntry]

    def encode(self) -> bytes:
        head = _HEAD.pack(self.magic, FORMAT_VERSION, len(self.signatures), 0, len(self.payload))
        return head + self.payload + sigblock.encode(self.signatures)


def seal(magic: bytes, payload: bytes, signers: list[Signer]) -> Envelope:
    return Envelope(magic, payload, sigblock.sign_all(signers, payload))


def decode(data: bytes, magic: bytes, what: str, max_payload: int, max_sigs: int) -> Envelope:
    if len(data) < _HEAD.size:
        raise FormatError(f"{what} is truncated: {len(data)} bytes, the header alone is 12")
    got_magic, version, count, reserved, length = _HEAD.unpack_from(data)
    if got_magic != magic:
        raise FormatError(f"{what} has the wrong magic bytes: not an mpseal {what}")
    if version != FORMAT_VERSION:
        raise FormatError(f"{what} format version {version} is not supported (this mpseal reads 1)")
    if reserved != 0:
        raise FormatError(f"{what} header has non-zero reserved bytes")
    if count > max_sigs:
        raise FormatError(f"{what} claims {count} signatures, more than the limit of {max_sigs}")
    if length > max_payload:
        raise FormatError(f"{what} payload of {length} bytes exceeds the {max_payload}-byte limit")
    end = _HEAD.size + length + count * sigblock.ENTRY_LENGTH
    if len(data) < end:
        raise FormatError(f"{what} is truncated: {len(data)} bytes, header says {end}")
    if len(data) > end:
        raise FormatError(f"{what} has {len(data) - end} unexpected bytes after the signatures")
    payload = bytes(data[_HEAD.size : _HEAD.size + length])
    sigs = sigblock.decode(data[_HEAD.size + length : end], count)
    return Envelope(got_magic, payload, sigs)
