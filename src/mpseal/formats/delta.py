"""Delta files `.mpsd`: a new release artifact rebuilt from the one a device runs.

    header (92 bytes)
      0   4  magic b"MPSD"
      4   1  format version = 1
      5   1  wbits: the literal stream's deflate window, 2**wbits bytes (9..12)
      6   2  reserved, zero
      8   4  op count (1..limits.delta_max_ops)
      12  4  stream length (compressed bytes)
      16  4  source artifact length
      20  4  new artifact length
      24  32 SHA-256 of the source artifact (the whole slot file)
      56  32 SHA-256 of the new artifact
      88  4  header check: first 4 bytes of SHA-256 of bytes 0..87
    stream: raw deflate (no zlib header), window 2**wbits, inflating to exactly `count`
      ops, each 9 bytes: kind (u8: 0 COPY, 1 LITERAL), a (i32), n (u32)
      COPY    n bytes of the source artifact from offset e + a, where e is where the
              previous COPY ended (0 at first): 0 <= e + a, e + a + n <= source length
      LITERAL the n bytes that follow the op in the stream (a = 0)
      every n is 1..limits.delta_max_op; the n add up to the new artifact length;
      nothing follows the stream.

Nothing in a delta is trusted: the rebuilt artifact is checked against the signed
manifest (signature, image hash, per-file hashes) before it can be staged. The device
(runtime/mpseal_delta.py) parses the same bytes under the same limits. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from mpseal.errors import FormatError, IntegrityError
from mpseal.limits import DEFAULT_LIMITS, Limits

MAGIC = b"MPSD"
HEADER = struct.Struct("<4sBBHIIII32s32s4s")
HEADER_LENGTH = HEADER.size  # 92
OP = struct.Struct("<BiI")
OP_LENGTH = OP.size  # 9
COPY, LITERAL = 0, 1
WBITS = 12  # what `make` writes: a 4 KiB window on the device
BLOCK = 12  # bytes hashed to find a match
# A copy op costs 9 bytes (fewer deflated) and breaks the deflate context, so shorter
# matches stay literal. 12, not more: an added module shares many short runs (names,
# qstrs) with the rest of the image, and on benchmarks/delta.py's code bases copying
# those made a one-module delta about 3 % smaller than MIN_MATCH 32 did.
MIN_MATCH = 12


@dataclass(frozen=True)
class DeltaHeader:
    wbits: int
    ops: int
    literal_length: int
    source_length: int
    new_length: int
    source_sha256: str
    new_sha256: str


def parse_header(data: bytes, limits: Limits = DEFAULT_LIMITS) -> DeltaHeader:
    if len(data) < HEADER_LENGTH:
        raise FormatError("delta is truncated")
    (magic, version, wbits, reserved, ops, lit, src_len, new_len, src_sha, new_sha, check) = (
        HEADER.unpack_from(data)
    )
    if magic != MAGIC:
        raise FormatError("not an mpseal delta (wrong magic)")
    if version != 1:
        raise FormatError(f"delta format version {version} is not supported")
    if hashlib.sha256(data[:88]).digest()[:4] != check:
        raise FormatError("delta header is damaged")
    if (
        reserved
        or not limits.delta_wbits_min <= wbits <= limits.delta_wbits_max
        or not 1 <= ops <= limits.delta_max_ops
        or src_len > limits.artifact_max_length
        or new_len > limits.artifact_max_length
        or not 0 < new_len
    ):
        raise FormatError("delta header field out of range")
    if len(data) != HEADER_LENGTH + lit:
        raise FormatError("delta length does not match its header")
    return DeltaHeader(wbits, ops, lit, src_len, new_len, src_sha.hex(), new_sha.hex())


def check_op(
    i: int,
    kind: int,
    a: int,
    n: int,
    head: DeltaHeader,
    built: int,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """One op (a COPY's `a` made absolute), with `built` bytes of the new artifact before
    it (the device's rules too)."""
    if not 1 <= n <= limits.delta_max_op:
        raise FormatError(f"delta op {i} has a length out of range")
    if kind == COPY:
        if a < 0 or a + n > head.source_length:
            raise FormatError(f"delta op {i} copies beyond the source")
    elif kind != LITERAL or a != 0:
        raise FormatError(f"delta op {i} is malformed")
    if built + n > head.new_length:
        raise FormatError("delta ops build more than the new artifact's length")


def apply(source: bytes, data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Rebuild the new artifact; FormatError/IntegrityError on anything wrong."""
    head = parse_header(data, limits)
    if (
        len(source) != head.source_length
        or hashlib.sha256(source).hexdigest() != head.source_sha256
    ):
        raise IntegrityError("delta was made against another source artifact")
    most = head.ops * OP_LENGTH + head.new_length  # what a valid stream inflates to, at most
    d = zlib.decompressobj(-head.wbits)
    try:
        stream = d.decompress(data[HEADER_LENGTH:], most + 1)
    except zlib.error as e:
        raise FormatError(f"delta stream is damaged: {e}") from None
    if len(stream) > most or not d.eof or d.unused_data or d.unconsumed_tail:
        raise FormatError("delta stream is not one whole deflate stream of the ops")
    out = bytearray()
    pos = end = 0
    for i in range(head.ops):
        if pos + OP_LENGTH > len(stream):
            raise FormatError("delta stream ends inside its ops")
        kind, a, n = OP.unpack_from(stream, pos)
        pos += OP_LENGTH
        if kind == COPY:
            a += end
        check_op(i, kind, a, n, head, len(out), limits)
        if kind == COPY:
            out += source[a : a + n]
            end = a + n
        else:
            if pos + n > len(stream):
                raise FormatError("delta stream ends inside a literal")
            out += stream[pos : pos + n]
            pos += n
    if pos != len(stream):
        raise FormatError("delta stream has bytes after its ops")
    if len(out) != head.new_length:
        raise FormatError("delta ops do not build the new artifact's length")
    if hashlib.sha256(out).hexdigest() != head.new_sha256:
        raise IntegrityError("rebuilt artifact does not match the delta's hash")
    return bytes(out)


def _ops(old: bytes, new: bytes, max_op: int) -> list[tuple[int, int, int]]:
    index: dict[bytes, int] = {}
    for i in range(len(old) - BLOCK, -1, -1):  # the first occurrence wins
        index[old[i : i + BLOCK]] = i
    ops: list[tuple[int, int, int]] = []  # (kind, source offset, length)
    lit_start = j = 0
    expect = -1  # where the last copy ended in the source: tried first
    while j <= len(new) - BLOCK:
        key = new[j : j + BLOCK]
        i = expect if expect >= 0 and old[expect : expect + BLOCK] == key else index.get(key, -1)
        if i < 0:
            j += 1
            continue
        k = BLOCK
        while j + k < len(new) and i + k < len(old):
            step = min(256, len(new) - j - k, len(old) - i - k)
            if new[j + k : j + k + step] == old[i + k : i + k + step]:
                k += step
            elif new[j + k] == old[i + k]:
                k += 1
            else:
                break
        back = 0
        while j - back > lit_start and i - back > 0 and new[j - back - 1] == old[i - back - 1]:
            back += 1
        if k + back < MIN_MATCH:
            j += 1
            continue
        j, i, k = j - back, i - back, k + back
        if j > lit_start:
            ops.append((LITERAL, lit_start, j - lit_start))
        ops.append((COPY, i, k))
        j += k
        lit_start = j
        expect = i + k
    if lit_start < len(new):
        ops.append((LITERAL, lit_start, len(new) - lit_start))
    out = []
    for kind, a, n in ops:  # split to the per-op bound
        while n:
            m = min(n, max_op)
            out.append((kind, a, m))
            a, n = a + m, n - m
    return out


def make(old: bytes, new: bytes, wbits: int = WBITS, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The delta that rebuilds `new` from `old` (both whole artifacts)."""
    ops = _ops(old, new, limits.delta_max_op)
    if len(ops) > limits.delta_max_ops:
        raise FormatError(f"a delta would need {len(ops)} ops (limit {limits.delta_max_ops})")
    plain = bytearray()
    end = 0  # copies are relative to where the last one ended: a shifted run compresses
    for k, a, n in ops:
        plain += OP.pack(k, a - end if k == COPY else 0, n)
        if k == COPY:
            end = a + n
        else:
            plain += new[a : a + n]
    comp = zlib.compressobj(9, zlib.DEFLATED, -wbits, 9)
    stream = comp.compress(bytes(plain)) + comp.flush()
    head = bytearray(
        HEADER.pack(
            MAGIC,
            1,
            wbits,
            0,
            len(ops),
            len(stream),
            len(old),
            len(new),
            hashlib.sha256(old).digest(),
            hashlib.sha256(new).digest(),
            b"\0" * 4,
        )
    )
    head[88:92] = hashlib.sha256(head[:88]).digest()[:4]
    data = bytes(head) + stream
    if apply(old, data, limits) != new:  # never publish a delta that does not rebuild
        raise IntegrityError("delta does not rebuild the new artifact")
    return data
