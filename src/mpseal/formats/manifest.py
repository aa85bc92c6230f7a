"""The release manifest: what an artifact claims to be, signed by the release key.

A UTF-8 JSON object, written with sorted keys and no spaces:

    {"type": "mpseal-release", "spec": 1,
     "app": "hello", "version": "1.2.0", "counter": 3,
     "board": "esp32", "port": "esp32",
     "mpy": {"version": "6.3", "arch": "xtensawin"},
     "image": {"format": "romfs", "sha256": "<64 hex>", "size": 12345},
     "entry": "main",
     "files": {"count": 2, "offset": 12224, "size": 136, "sha256": "<64 hex>"},
     "build": {"opt": 2, "source_lines": false, "tool": "mpseal 0.1.0"}}

``files`` names the image's file index (formats/fileindex.py): the last ``size`` bytes
of the image, from ``offset``, listing ``count`` files as (path, size, offset, sha256).
A device without ``vfs.VfsRom`` serves the app from it (runtime/mpseal_appfs.py): it
checks the index against this hash once, then reads each file at its offset and checks
it against its hash before anything sees it, so it never parses the image from flash.
The index is not in the manifest itself because it grows with the app (about 70 bytes
a file) while the manifest is read whole at every boot under a small shared limit.
``files`` may be null (no index: such a release mounts only through ``vfs.VfsRom``).
``build`` is for people.

An encrypted release (formats/encrypted.py) has ``image.format`` ``"romfs-aes256cbc"``,
``files`` null, and ``"encrypted": {"alg": "aes-256-cbc", "table": {"sha256", "size"},
"romfs_size"}``: its file index travels inside the encrypted image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpseal.errors import FormatError
from mpseal.formats import jsondoc, names
from mpseal.formats.fileindex import FileEntry, IndexRef, check_file_name
from mpseal.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DOC_TYPE",
    "Encryption",
    "FileEntry",
    "IndexRef",
    "Manifest",
    "check_app_name",
    "check_file_name",
    "parse",
]

DOC_TYPE = "mpseal-release"
PLAIN = "romfs"
ENCRYPTED = "romfs-aes256cbc"  # formats/encrypted.py
ALG = "aes-256-cbc"


@dataclass(frozen=True)
class Encryption:
    """What the signed manifest says of an encrypted image (formats/encrypted.py)."""

    table_sha256: str  # SHA-256 of the plaintext file index (formats/fileindex.py)
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
    files: IndexRef | None = None  # the image's file index (formats/fileindex.py)
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
            "files": self.files.to_dict() if self.files else None,
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
    files = parse_index_ref(f, image_size, limits)
    encrypted = None
    if fmt == ENCRYPTED:
        encrypted = parse_encryption(f.obj("encrypted"), image_size, limits)
        if files is not None:
            raise FormatError("an encrypted release names its file index only inside the image")
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
        files=files,
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
        table_size=table.int("size", 8, limits.image_max_length),
        romfs_size=f.int("romfs_size", 0, limits.image_max_length),
    )
    if enc.stored_size != image_size:
        raise FormatError("encrypted image size does not match its table and ROMFS sizes")
    return enc


def parse_index_ref(f: jsondoc.Fields, image_size: int, limits: Limits) -> IndexRef | None:
    """The ``files`` object: the file index at the end of the image, or null (no index: the
    release mounts only where ``vfs.VfsRom`` is; runtime/mpseal_appfs.py refuses it)."""
    if f.raw().get("files", 0) is None:
        return None
    ref = f.obj("files")
    if set(ref.keys()) != {"count", "offset", "size", "sha256"}:
        raise FormatError("manifest files is not {count, offset, size, sha256}")
    count = ref.int("count", 1, limits.files_max_count)
    offset = ref.int("offset", 1, image_size)
    size = ref.int("size", 8, image_size)
    if offset + size != image_size:
        raise FormatError("manifest file index does not end the image")
    return IndexRef(count, offset, size, ref.hex("sha256", 32))
