"""A small strict-DER reader: enough to prove a certificate is DER and to splice a signature.

``reencode`` walks the TLV tree (it accepts BER's non-minimal lengths, booleans and
integers so it can *say* what is wrong), writes the canonical DER for every element
and returns it; ``check_strict`` compares that with the input. Indefinite lengths,
constructed strings and high tag numbers are refused outright: X.509 never needs them.

Every read is bounded (input length, nesting depth, element count) and every failure
is a ``FormatError`` with the byte offset; nothing else escapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpseal.errors import FormatError

SEQUENCE = 0x30
SET = 0x31
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
_PRIMITIVE_ONLY = {
    BOOLEAN,
    INTEGER,
    BIT_STRING,
    OCTET_STRING,
    0x05,
    0x06,
    0x0C,
    0x13,
    0x16,
    0x17,
    0x18,
    0x1E,
}


@dataclass(frozen=True)
class DerLimits:
    max_length: int = 64 * 1024
    max_depth: int = 24
    max_elements: int = 4096


DEFAULT_DER_LIMITS = DerLimits()


@dataclass(frozen=True)
class Tlv:
    tag: int
    start: int  # offset of the tag byte
    content_start: int
    end: int  # offset just past the content


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(content)) + content


def read_tlv(data: bytes, pos: int, end: int) -> Tlv:
    """One element at ``pos`` that must end by ``end``; BER lengths allowed, reported later."""
    if pos + 2 > end:
        raise FormatError(f"truncated DER element at offset {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise FormatError(f"high-tag-number form at offset {pos} (not used in X.509)")
    first = data[pos + 1]
    if first == 0x80:
        raise FormatError(f"indefinite length at offset {pos} (BER, not DER)")
    if first < 0x80:
        length, header = first, 2
    else:
        count = first & 0x7F
        if count > 4:
            raise FormatError(f"length of {count} bytes at offset {pos} is not plausible")
        if pos + 2 + count > end:
            raise FormatError(f"truncated length at offset {pos}")
        length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
        header = 2 + count
    if pos + header + length > end:
        raise FormatError(f"element at offset {pos} claims {length} bytes, beyond its container")
    return Tlv(tag, pos, pos + header, pos + header + length)


def children(data: bytes, tlv: Tlv) -> list[Tlv]:
    """The elements inside a constructed ``tlv``, which must fill it exactly."""
    out: list[Tlv] = []
    pos = tlv.content_start
    while pos < tlv.end:
        child = read_tlv(data, pos, tlv.end)
        out.append(child)
        pos = child.end
    return out


def top(data: bytes) -> Tlv:
    """The single top-level element; trailing bytes are an error."""
    tlv = read_tlv(data, 0, len(data))
    if tlv.end != len(data):
        raise FormatError(f"{len(data) - tlv.end} trailing bytes after the DER element")
    return tlv


class _Walker:
    def __init__(self, data: bytes, limits: DerLimits) -> None:
        self.data = data
        self.limits = limits
        self.elements = 0

    def canon(self, tlv: Tlv, depth: int) -> bytes:
        self.elements += 1
        if self.elements > self.limits.max_elements:
            raise FormatError(f"more than {self.limits.max_elements} DER elements")
        if depth > self.limits.max_depth:
            raise FormatError(f"DER nested deeper than {self.limits.max_depth} levels")
        content = self.data[tlv.content_start : tlv.end]
        if tlv.tag & 0x20:
            if (tlv.tag & 0xDF) in _PRIMITIVE_ONLY and tlv.tag & 0xC0 == 0:
                raise FormatError(f"constructed string at offset {tlv.start} (BER, not DER)")
            parts = [self.canon(c, depth + 1) for c in children(self.data, tlv)]
            if tlv.tag == SET:
                parts.sort()  # DER orders SET OF by encoding
            return encode(tlv.tag, b"".join(parts))
        if tlv.tag == BOOLEAN:
            if len(content) != 1:
                raise FormatError(f"BOOLEAN of {len(content)} bytes at offset {tlv.start}")
            return encode(BOOLEAN, b"\xff" if content[0] else b"\x00")
        if tlv.tag == INTEGER:
            if not content:
                raise FormatError(f"empty INTEGER at offset {tlv.start}")
            value = int.from_bytes(content, "big", signed=True)
            size = (value + (value < 0)).bit_length() // 8 + 1
            return encode(INTEGER, value.to_bytes(size, "big", signed=True))
        if tlv.tag == BIT_STRING:
            if not content or content[0] > 7 or (len(content) == 1 and content[0]):
                raise FormatError(f"malformed BIT STRING at offset {tlv.start}")
        return encode(tlv.tag, content)


def reencode(data: bytes, limits: DerLimits = DEFAULT_DER_LIMITS) -> bytes:
    """The canonical DER of ``data``; raises ``FormatError`` where no DER reading exists."""
    if len(data) > limits.max_length:
        raise FormatError(f"DER input is larger than {limits.max_length} bytes")
    return _Walker(data, limits).canon(top(data), 0)


def check_strict(data: bytes, limits: DerLimits = DEFAULT_DER_LIMITS) -> None:
    """Raise ``FormatError`` unless ``data`` is exactly its own canonical DER encoding."""
    canonical = reencode(data, limits)
    if canonical != data:
        at = next(
            (i for i, (a, b) in enumerate(zip(data, canonical, strict=False)) if a != b),
            min(len(data), len(canonical)),
        )
        raise FormatError(
            f"not strict DER: re-encoding differs from byte {at} on "
            "(non-minimal length, integer or boolean, or unsorted SET)"
        )
