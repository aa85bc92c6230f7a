"""The file index of a release image: each file's path, size, offset and SHA-256.

A device without ``vfs.VfsRom`` serves the app through runtime/mpseal_appfs.py, which
needs, for every file of the image, where its bytes are and their hash. That table
grows with the app (about 70 bytes a file), so it is not in the manifest (which every
boot reads whole and whose limit host and device share) but at the end of the image,
after the ROMFS bytes (``vfs.VfsRom`` ignores bytes after the ROMFS), named by the
signed manifest's ``files`` object ``{"count", "offset", "size", "sha256"}``. The image
hash covers it as well; the device checks its own SHA-256 once, when it reads it into
RAM, and keeps it there as one bytes object.

Binary, little-endian::

    magic   4   b"MPSF"
    count   4   u32, 1..Limits.files_max_count
    entry*      size u32, offset i32 (relative: this file's offset in the image minus
                the previous entry's, the first entry's minus 0), sha256 32 bytes,
                name length u8 (1..Limits.file_name_max_length), name (ASCII)

Offsets are relative so that a delta update (delta.py) pays only for what changed: a
file added, removed or resized moves the offsets of every file after it, which with
absolute offsets rewrote every later entry; relative, only its own entry and the next
one change. Readers add them up as they parse.

Rules: exactly ``count`` entries using every byte; names are plain relative paths
(manifest.check_file_name) in strictly ascending order (so no name twice); every file's
absolute offset is >= 0 and the file lies in the ROMFS part of the image
(offset + size <= the index's own offset).
runtime/mpseal_appfs.py ``load_index`` reads the same bytes with the same rules
(tests/test_differential.py feeds both).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from mpseal.errors import FormatError
from mpseal.formats import names
from mpseal.limits import DEFAULT_LIMITS, Limits

MAGIC = b"MPSF"
_HEAD = struct.Struct("<4sI")
_ENTRY = struct.Struct("<Ii32sB")  # size, offset relative to the previous entry's

# One file of the image: (path, size, offset of its bytes in the image, sha256 hex).
FileEntry = tuple[str, int, int, str]


def check_file_name(name: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """A file name inside the image: relative, '/'-separated, plain ASCII, no '..'."""
    if not isinstance(name, str) or not 0 < len(name) <= limits.file_name_max_length:
        raise FormatError(f"file name {name!r} is empty or too long")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or not names.FILE_SEGMENT.fullmatch(part):
            raise FormatError(
                f"file name {name!r} is not a plain relative path (letters, digits, _ . - and /)"
            )
    return name


@dataclass(frozen=True)
class IndexRef:
    """The manifest's ``files`` object: where the index is in the image and its hash."""

    count: int
    offset: int
    size: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return {
            "count": self.count,
            "offset": self.offset,
            "size": self.size,
            "sha256": self.sha256,
        }


def encode(entries: tuple[FileEntry, ...] | list[FileEntry]) -> bytes:
    """The index of ``entries`` (sorted here; names already checked)."""
    out = bytearray(_HEAD.pack(MAGIC, len(entries)))
    prev = 0
    for name, size, offset, sha in sorted(entries):
        raw = name.encode("ascii")
        out += _ENTRY.pack(size, offset - prev, bytes.fromhex(sha), len(raw)) + raw
        prev = offset
    return bytes(out)


def append(romfs_image: bytes, entries: tuple[FileEntry, ...]) -> tuple[bytes, IndexRef]:
    """The release image (ROMFS bytes, then the index) and the manifest's reference to it."""
    index = encode(entries)
    ref = IndexRef(len(entries), len(romfs_image), len(index), hashlib.sha256(index).hexdigest())
    return romfs_image + index, ref


def parse(data: bytes, files_end: int, limits: Limits = DEFAULT_LIMITS) -> tuple[FileEntry, ...]:
    """The entries of index ``data``; every file must end at or before ``files_end``."""
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        raise FormatError("file index is not an mpseal file index")
    _, count = _HEAD.unpack_from(data)
    if not 1 <= count <= limits.files_max_count:
        raise FormatError(f"file index lists {count} files, not 1..{limits.files_max_count}")
    pos = _HEAD.size
    files: list[FileEntry] = []
    last = ""
    offset = 0
    for _ in range(count):
        if pos + _ENTRY.size > len(data):
            raise FormatError("file index is truncated")
        size, step, sha, n = _ENTRY.unpack_from(data, pos)
        offset += step
        pos += _ENTRY.size
        if not 0 < n <= limits.file_name_max_length or pos + n > len(data):
            raise FormatError("file index entry has a bad name length")
        try:
            name = data[pos : pos + n].decode("ascii")
        except UnicodeDecodeError:
            raise FormatError("file index entry name is not ASCII") from None
        pos += n
        check_file_name(name, limits)
        if files and name <= last:
            raise FormatError(f"file index is not in order of names at {name}")
        if offset < 0 or offset + size > files_end:
            raise FormatError(f"file index entry {name} lies outside the image's files")
        files.append((name, size, offset, sha.hex()))
        last = name
    if pos != len(data):
        raise FormatError("file index has bytes after its last entry")
    listed = {f[0] for f in files}
    for name in listed:
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        while folder:
            if folder in listed:
                raise FormatError(f"file index names {folder} as a file and a folder")
            folder = folder.rsplit("/", 1)[0] if "/" in folder else ""
    return tuple(files)


def read(image: bytes, ref: IndexRef, limits: Limits = DEFAULT_LIMITS) -> tuple[FileEntry, ...]:
    """The entries of the index inside ``image`` that the manifest's ``ref`` names."""
    data = image[ref.offset : ref.offset + ref.size]
    if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise FormatError("file index does not match its SHA-256 in the signed manifest")
    files = parse(data, ref.offset, limits)
    if len(files) != ref.count:
        raise FormatError("file index count differs from the signed manifest's")
    return files
