"""The release manifest: what an artifact claims to be, signed by the release key.

A UTF-8 JSON object, written with sorted keys and no spaces:

    {"type": "mpseal-release", "spec": 1,
     "app": "hello", "version": "1.2.0", "counter": 3,
     "board": "esp32", "port": "esp32",
     "mpy": {"version": "6.3", "arch": "xtensawin"},
     "image": {"format": "romfs", "sha256": "<64 hex>", "size": 12345},
     "entry": "main",
     "files": [["data/logo.bin", 4096, 24, "<64 hex>"], ["main.mpy", 812, 4136, "<64 hex>"]],
     "build": {"opt": 2, "source_lines": false, "tool": "mpseal 0.1.0"}}

An encrypted release (formats/encrypted.py) has ``image.format`` ``"romfs-aes256cbc"``,
an empty ``files`` list, and ``"encrypted": {"alg": "aes-256-cbc", "table": {"sha256",
"size"}, "romfs_size"}``: its file list travels inside the encrypted image.

``files`` lists every file of the image as ``[path, size, offset, sha256]``: ``offset``
is where the file's bytes start inside the image. A device without ``vfs.VfsRom``
serves the app from this signed list (runtime/mpseal_appfs.py): it reads each file
at its offset and checks it against its hash before anything sees it, so it never
parses the image from flash. ``build`` is for people.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mpseal.errors import FormatError
from mpseal.formats import jsondoc, names
from mpseal.limits import DEFAULT_LIMITS, Limits

DOC_TYPE = "mpseal-release"
PLAIN = "romfs"
ENCRYPTED = "romfs-aes256cbc"  # formats/encrypted.py
ALG = "aes-256-cbc"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

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
class Encryption:
    """What the signed manifest says of an encrypted image (formats/encrypted.py)."""

    table_sha256: str  # SHA-256 of the plaintext file table (JSON of the files list)
    table_size: int
    romfs_size: int  # the plaintext ROMFS image

    @property
    def stored_size(self) -> int:
        """IV, then the table and the ROMFS image, each padded to 16-byte blocks."""
        return 16 + -(-self.table_size // 16) * 16 + -(-self.romfs_size // 16) * 16

    def to_dict(self) -> dict[str, object]:
        return {
            "alg": ALG,
            "table": {"sha256": self.table_sha256, "size": self.table_size},
            "romfs_size": self.romfs_size,
        }


@dataclass(frozen=True)
class Manifest:
    app: str
    version: str
    counter: int
    board: str
    port: str
    mpy_version: str
    arch: str
    image_sha256: str
    image_size: int
    entry: str = "main"
    files: tuple[FileEntry, ...] = ()
    build: dict[str, object] = field(default_factory=dict)
    encrypted: Encryption | None = None

    def encode(self) -> bytes:
        doc: dict[str, object] = {
            "type": DOC_TYPE,
            "spec": 1,
            "app": self.app,
            "version": self.version,
            "counter": self.counter,
            "board": self.board,
            "port": self.port,
            "mpy": {"version": self.mpy_version, "arch": self.arch},
            "image": {
                "format": ENCRYPTED if self.encrypted else PLAIN,
                "sha256": self.image_sha256,
                "size": self.image_size,
            },
            "entry": self.entry,
            "files": [list(f) for f in self.files],
            "build": self.build,
        }
        if self.encrypted:
            doc["encrypted"] = self.encrypted.to_dict()
        return jsondoc.dumps(doc)

    def to_dict(self) -> dict[str, object]:
        return jsondoc.loads(self.encode(), "manifest")


def check_app_name(name: str) -> str:
    if not names.APP_NAME.fullmatch(name):
        raise FormatError(f"app name {name!r} must be 1-64 of letters, digits, _ . - ")
    return name


def check_version(version: str) -> str:
    if not names.VERSION.fullmatch(version):
        raise FormatError(f"version {version!r} must be 1-32 of letters, digits, . + -")
    return version


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Manifest:
    f = jsondoc.Fields(jsondoc.loads(data, "manifest"), "manifest")
    if f.req_str("type") != DOC_TYPE:
        raise FormatError("manifest is not of type mpseal-release")
    f.int("spec", 1, 1)
    mpy = f.obj("mpy")
    image = f.obj("image")
    fmt = image.req_str("format")
    if fmt not in (PLAIN, ENCRYPTED):
        raise FormatError("manifest image format is not romfs or romfs-aes256cbc")
    image_size = image.int("size", 0, limits.image_max_length)
    files = parse_files(f.list("files", limits.files_max_count), image_size, limits)
    encrypted = None
    if fmt == ENCRYPTED:
        encrypted = parse_encryption(f.obj("encrypted"), image_size, limits)
        if files:
            raise FormatError("an encrypted release lists its files only inside the image")
    entry = f.req_str("entry", 64)
    if not names.MODULE.fullmatch(entry):
        raise FormatError(f"manifest entry {entry!r} is not a module name")
    build = f.obj("build")
    return Manifest(
        app=check_app_name(f.req_str("app", 64)),
        version=check_version(f.req_str("version", 32)),
        counter=f.int("counter", 0, 2**31 - 1),
        board=f.req_str("board", 32),
        port=f.req_str("port", 32),
        mpy_version=mpy.req_str("version", 8),
        arch=mpy.req_str("arch", 16),
        image_sha256=image.hex("sha256", 32),
        image_size=image_size,
        entry=entry,
        files=tuple(files),
        build=build.raw(),  # informational only
        encrypted=encrypted,
    )


def parse_encryption(
    f: jsondoc.Fields, image_size: int, limits: Limits = DEFAULT_LIMITS
) -> Encryption:
    """The ``encrypted`` object; runtime/mpseal_release.py parse_manifest checks the same."""
    if f.req_str("alg", 16) != ALG:
        raise FormatError("manifest encryption is not aes-256-cbc")
    table = f.obj("table")
    enc = Encryption(
        table_sha256=table.hex("sha256", 32),
        table_size=table.int("size", 2, limits.manifest_max_length),
        romfs_size=f.int("romfs_size", 0, limits.image_max_length),
    )
    if enc.stored_size != image_size:
        raise FormatError("encrypted image size does not match its table and ROMFS sizes")
    return enc


def _count(value: object, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= hi


def parse_files(
    items: list[object], image_size: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[FileEntry, ...]:
    """The ``files`` list: each ``[path, size, offset, sha256]`` inside the image, no path twice.

    runtime/mpseal_appfs.py makes the same checks on the device."""
    files: list[FileEntry] = []
    seen: set[str] = set()
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 4
            or not _count(item[1], image_size)
            or not _count(item[2], image_size)
            or not isinstance(item[3], str)
            or not _SHA256.fullmatch(item[3])
        ):
            raise FormatError("manifest file list entry is not [path, size, offset, sha256]")
        name = check_file_name(item[0], limits)
        if item[2] + item[1] > image_size:
            raise FormatError(f"manifest file {name} lies outside the image")
        if name in seen:
            raise FormatError(f"manifest lists file {name} twice")
        seen.add(name)
        files.append((name, item[1], item[2], item[3]))
    return tuple(files)
