"""MicroPython ROMFS images (the ``vfs.VfsRom`` format): a bounded reader and a writer.

The writer produces the same bytes as mpremote's ``VfsRomWriter`` (a test holds
it to that); it lives here so a build does not import mpremote. Structure:

    image   := HEADER(d2 cd 31) uint(len) record*            (records span len bytes)
    record  := uint(kind) uint(len) payload[len]
    kind 1 padding, 2 data verbatim, 3 data pointer(uint offset, uint len),
    kind 4 directory(uint namelen, name, record*), kind 5 file(uint namelen, name, record*)

``uint`` is big-endian base-128 with the high bit meaning "more bytes follow".
Unknown kinds are skipped, as VfsRom does.
"""

from __future__ import annotations

import hashlib
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
    offset: int = 0  # where ``data`` starts inside the image


def read_uint(buf: bytes, pos: int, end: int, what: str = "ROMFS image") -> tuple[int, int]:
    """MicroPython's variable-length unsigned integer at ``pos`` (7 bits a byte, most
    significant first; ROMFS and .mpy files both use it): (value, position after it)."""
    value = 0
    for _ in range(_MAX_UINT_BYTES):
        if pos >= end:
            raise FormatError(f"{what} is truncated inside a length field")
        b = buf[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos
    raise FormatError(f"{what} has a length field longer than 5 bytes")


def _record(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    kind, pos = read_uint(buf, pos, end)
    length, pos = read_uint(buf, pos, end)
    if length > end - pos:
        raise FormatError("ROMFS record runs past its container")
    return kind, pos, pos + length


def _name(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    n, pos = read_uint(buf, pos, end)
    if n > end - pos or n == 0:
        raise FormatError("ROMFS entry name is empty or runs past its record")
    try:
        name = bytes(buf[pos : pos + n]).decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("ROMFS entry name is not ASCII") from None
    if "/" in name or name in (".", ".."):
        raise FormatError(f"ROMFS entry name {name!r} is not a plain name")
    return name, pos + n


def _enc_uint(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _record_bytes(kind: int, payload: bytes) -> bytes:
    return _enc_uint(kind) + _enc_uint(len(payload)) + payload


def _name_bytes(name: str) -> bytes:
    raw = name.encode("ascii")
    return _enc_uint(len(raw)) + raw


def write(files: dict[str, bytes]) -> bytes:
    """A ROMFS image of ``{"lib/util.mpy": data, ...}``: folders from the paths, sorted,
    file data stored verbatim. Paths must already be checked (manifest.check_file_name)."""
    return write_with_entries(files)[0]


def write_with_entries(
    files: dict[str, bytes],
) -> tuple[bytes, tuple[tuple[str, int, int, str], ...]]:
    """``write(files)`` and its ``entries()``, found while writing (not by reading it back)."""
    tree: dict[str, object] = {}
    for path in sorted(files):
        node = tree
        *folders, leaf = path.split("/")
        for folder in folders:
            sub = node.setdefault(folder, {})
            if not isinstance(sub, dict):
                raise FormatError(f"{path}: {folder} is both a file and a folder")
            node = sub
        if leaf in node:
            raise FormatError(f"{path}: {leaf} is both a file and a folder")
        node[leaf] = files[path]
    found: list[tuple[str, int, int]] = []  # path, size, offset inside the body
    body = _folder_bytes(tree, "", found)
    length = _enc_uint(len(body))
    if (len(HEADER) + len(length) + len(body)) % 2:
        length = b"\x80" + length  # keep the image an even length, as VfsRom writers do
    start = len(HEADER) + len(length)
    entries = tuple(
        sorted(
            (path, size, start + at, hashlib.sha256(files[path]).hexdigest())
            for path, size, at in found
        )
    )
    return HEADER + length + body, entries


def _folder_bytes(node: dict[str, object], prefix: str, found: list[tuple[str, int, int]]) -> bytes:
    out = bytearray()
    for name in sorted(node):
        value = node[name]
        if isinstance(value, dict):
            sub: list[tuple[str, int, int]] = []  # offsets inside `inner`
            inner = _folder_bytes(value, f"{prefix}{name}/", sub)
            rec = _record_bytes(KIND_DIR, _name_bytes(name) + inner)
            base = len(out) + len(rec) - len(inner)
            found.extend((p, n, base + at) for p, n, at in sub)
            out += rec
        else:
            assert isinstance(value, bytes)
            data_rec = _record_bytes(KIND_VERBATIM, value)
            rec = _record_bytes(KIND_FILE, _name_bytes(name) + data_rec)
            found.append((prefix + name, len(value), len(out) + len(rec) - len(value)))
            out += rec
    return bytes(out)


def read(image: bytes) -> list[RomFile]:
    """List every file in ``image`` (path, contents). Raises only ``FormatError``."""
    if image[:3] != HEADER:
        raise FormatError("not a ROMFS image (wrong header bytes)")
    length, pos = read_uint(image, 3, len(image))
    if length > len(image) - pos:
        raise FormatError("ROMFS image is shorter than its header says")
    files: list[RomFile] = []
    _walk(image, pos, pos + length, "", 0, files)
    return files


def entries(image: bytes) -> tuple[tuple[str, int, int, str], ...]:
    """Every file of ``image``: (path, size, offset, sha256 hex), sorted (the file index's
    entries, formats/fileindex.py)."""
    return tuple(
        sorted(
            (f.path, len(f.data), f.offset, hashlib.sha256(f.data).hexdigest()) for f in read(image)
        )
    )


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
            offset, data = _file_data(buf, p, stop)
            out.append(RomFile(prefix + name, data, offset))
        pos = stop


def _file_data(buf: bytes, pos: int, end: int) -> tuple[int, bytes]:
    while pos < end:
        kind, start, stop = _record(buf, pos, end)
        if kind == KIND_VERBATIM:
            return start, bytes(buf[start:stop])
        if kind == KIND_POINTER:
            offset, p = read_uint(buf, start, stop)
            n, _ = read_uint(buf, p, stop)
            if offset + n > len(buf):
                raise FormatError("ROMFS data pointer points outside the image")
            return offset, bytes(buf[offset : offset + n])
        pos = stop
    return end, b""
