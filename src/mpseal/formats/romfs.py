"""Reading MicroPython ROMFS images (the ``vfs.VfsRom`` format) with bounds on everything.

The writer is mpremote's ``VfsRomWriter`` (used by ``mpseal.build``); this reader
lists what an image holds, for ``inspect`` and for tests. Structure:

    image   := HEADER(d2 cd 31) uint(len) record*            (records span len bytes)
    record  := uint(kind) uint(len) payload[len]
    kind 1 padding, 2 data verbatim, 3 data pointer(uint offset, uint len),
    kind 4 directory(uint namelen, name, record*), kind 5 file(uint namelen, name, record*)

``uint`` is big-endian base-128 with the high bit meaning "more bytes follow".
Unknown kinds are skipped, as VfsRom does.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpseal.errors import FormatError

HEADER = b"\xd2\xcd\x31"
KIND_PADDING, KIND_VERBATIM, KIND_POINTER, KIND_DIR, KIND_FILE = 1, 2, 3, 4, 5
MAX_DEPTH = 16
_MAX_UINT_BYTES = 5


@dataclass(frozen=True)
class RomFile:
    path: str
    data: bytes


def _uint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for i in range(_MAX_UINT_BYTES):
        if pos >= end:
            raise FormatError("ROMFS image is truncated inside a length field")
        b = buf[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos
    raise FormatError("ROMFS length field is longer than 5 bytes")


def _record(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    kind, pos = _uint(buf, pos, end)
    length, pos = _uint(buf, pos, end)
    if length > end - pos:
        raise FormatError("ROMFS record runs past its container")
    return kind, pos, pos + length


def _name(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    n, pos = _uint(buf, pos, end)
    if n > end - pos or n == 0:
        raise FormatError("ROMFS entry name is empty or runs past its record")
    try:
        name = bytes(buf[pos : pos + n]).decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("ROMFS entry name is not ASCII") from None
    if "/" in name or name in (".", ".."):
        raise FormatError(f"ROMFS entry name {name!r} is not a plain name")
    return name, pos + n


def read(image: bytes) -> list[RomFile]:
    """List every file in ``image`` (path, contents). Raises only ``FormatError``."""
    if image[:3] != HEADER:
        raise FormatError("not a ROMFS image (wrong header bytes)")
    length, pos = _uint(image, 3, len(image))
    if length > len(image) - pos:
        raise FormatError("ROMFS image is shorter than its header says")
    files: list[RomFile] = []
    _walk(image, pos, pos + length, "", 0, files)
    return files


def _walk(buf: bytes, pos: int, end: int, prefix: str, depth: int, out: list[RomFile]) -> None:
    if depth > MAX_DEPTH:
        raise FormatError(f"ROMFS directories nest deeper than {MAX_DEPTH}")
    while pos < end:
        kind, start, stop = _record(buf, pos, end)
        if kind == KIND_DIR:
            name, p = _name(buf, start, stop)
            _walk(buf, p, stop, f"{prefix}{name}/", depth + 1, out)
        elif kind == KIND_FILE:
            name, p = _name(buf, start, stop)
            out.append(RomFile(prefix + name, _file_data(buf, p, stop)))
        pos = stop


def _file_data(buf: bytes, pos: int, end: int) -> bytes:
    while pos < end:
        kind, start, stop = _record(buf, pos, end)
        if kind == KIND_VERBATIM:
            return bytes(buf[start:stop])
        if kind == KIND_POINTER:
            offset, p = _uint(buf, start, stop)
            n, _ = _uint(buf, p, stop)
            if offset + n > len(buf):
                raise FormatError("ROMFS data pointer points outside the image")
            return bytes(buf[offset : offset + n])
        pos = stop
    return b""
