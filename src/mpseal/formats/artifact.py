"""The release artifact ``<app>-<version>.mpseal``: one file holding a signed release.

Layout (little-endian). Every byte is either signed, checked against what is
signed, or required to be zero, so no byte can change unnoticed:

    offset  size  field
    0       8     magic  b"\\x89MPSEAL\\n"  (the high bit and LF catch 7-bit and text-mode damage)
    8       2     format version = 1
    10      2     header length = 32
    12      4     manifest length m (<= Limits.manifest_max_length)
    16      1     signature count c (1..Limits.signatures_max_count)
    17      3     reserved, zero
    20      4     image offset (multiple of 64, = first 64-aligned offset after the signatures)
    24      4     image length (<= Limits.image_max_length; must equal the manifest's)
    28      4     header check: first 4 bytes of SHA-256(bytes 0..27), so a damaged
                  header is reported as such instead of as a puzzling later error
    32      m     manifest (JSON, see manifest.py) — the signed bytes
    32+m    96×c  signature block (see sigblock.py)
    ...           zero padding up to the image offset
    off     len   image: ROMFS (vfs.VfsRom format), then the file index (fileindex.py,
                  named by the manifest's files); its SHA-256 is in the manifest

Nothing may follow the image. Threat tier: verified on the host or the device,
the signature stops T1 (a network, mirror or CDN serving altered or foreign code).
It does not hide the code from anyone holding the file (T0 is handled by
compilation to .mpy, not by this container).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from mpseal.crypto.keys import Signer
from mpseal.errors import FormatError, IntegrityError, PolicyError
from mpseal.formats import fileindex, romfs, sigblock
from mpseal.formats import manifest as manifest_mod
from mpseal.formats.manifest import Manifest
from mpseal.formats.sigblock import SignatureEntry
from mpseal.formats.trustroot import TrustRoot
from mpseal.limits import DEFAULT_LIMITS, Limits

MAGIC = b"\x89MPSEAL\n"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHIB3sII4s")
HEADER_LENGTH = HEADER.size  # 32
IMAGE_ALIGN = 64
_ZERO3 = b"\0" * 3
_CHECKED = 28


def header_check(head: bytes) -> bytes:
    return hashlib.sha256(head[:_CHECKED]).digest()[:4]


@dataclass(frozen=True)
class Artifact:
    manifest_bytes: bytes
    signatures: list[SignatureEntry]
    image: bytes

    @property
    def manifest(self) -> Manifest:
        return manifest_mod.parse(self.manifest_bytes)

    def files(self) -> tuple[fileindex.FileEntry, ...]:
        """The image's file index, checked against the manifest (empty when it has none)."""
        ref = self.manifest.files
        return fileindex.read(self.image, ref) if ref else ()

    @property
    def image_offset(self) -> int:
        end = (
            HEADER_LENGTH + len(self.manifest_bytes) + len(self.signatures) * sigblock.ENTRY_LENGTH
        )
        return -(-end // IMAGE_ALIGN) * IMAGE_ALIGN

    def encode(self) -> bytes:
        off = self.image_offset
        head = HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            HEADER_LENGTH,
            len(self.manifest_bytes),
            len(self.signatures),
            _ZERO3,
            off,
            len(self.image),
            b"",
        )
        head = head[:_CHECKED] + header_check(head)
        body = head + self.manifest_bytes + sigblock.encode(self.signatures)
        return body + b"\0" * (off - len(body)) + self.image


def create(manifest: Manifest, image: bytes, signers: list[Signer]) -> Artifact:
    if (
        hashlib.sha256(image).hexdigest() != manifest.image_sha256
        or len(image) != manifest.image_size
    ):
        raise IntegrityError("the manifest does not describe this image")
    mbytes = manifest.encode()
    return Artifact(mbytes, sigblock.sign_all(signers, mbytes), image)


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Artifact:
    """Split an artifact into its parts, checking structure only (no signature, no hash)."""
    if len(data) < HEADER_LENGTH:
        raise FormatError(f"artifact is truncated: {len(data)} bytes, the header alone is 32")
    if len(data) > limits.artifact_max_length:
        raise FormatError(f"artifact is larger than the {limits.artifact_max_length}-byte limit")
    magic, version, hlen, mlen, count, res1, off, ilen, check = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError("wrong magic bytes: this is not an mpseal artifact")
    if version != FORMAT_VERSION:
        raise FormatError(
            f"artifact format version {version} is not supported (this mpseal reads 1)"
        )
    if check != header_check(data):
        raise FormatError("artifact header is damaged (its check bytes do not match)")
    if hlen != HEADER_LENGTH:
        raise FormatError(f"artifact header length field is {hlen}, expected 32")
    if res1 != _ZERO3:
        raise FormatError("artifact header has non-zero reserved bytes")
    if mlen > limits.manifest_max_length:
        raise FormatError(
            f"manifest length {mlen} exceeds the {limits.manifest_max_length}-byte limit"
        )
    if not 1 <= count <= limits.signatures_max_count:
        raise FormatError(f"signature count {count} is outside 1..{limits.signatures_max_count}")
    if ilen > limits.image_max_length:
        raise FormatError(f"image length {ilen} exceeds the {limits.image_max_length}-byte limit")
    sig_end = HEADER_LENGTH + mlen + count * sigblock.ENTRY_LENGTH
    if off != -(-sig_end // IMAGE_ALIGN) * IMAGE_ALIGN:
        raise FormatError(f"image offset {off} is not where the layout puts it")
    if len(data) < off + ilen:
        raise FormatError(f"artifact is truncated: {len(data)} bytes, the header says {off + ilen}")
    if len(data) > off + ilen:
        raise FormatError(f"artifact has {len(data) - off - ilen} unexpected bytes after the image")
    if any(data[sig_end:off]):
        raise FormatError("artifact padding before the image is not zero")
    mbytes = bytes(data[HEADER_LENGTH : HEADER_LENGTH + mlen])
    sigs = sigblock.decode(data[HEADER_LENGTH + mlen : sig_end], count)
    return Artifact(mbytes, sigs, bytes(data[off : off + ilen]))


@dataclass(frozen=True)
class VerifiedRelease:
    manifest: Manifest
    keyids: list[str]
    artifact: Artifact


def verify(
    data: bytes,
    root: TrustRoot,
    board: str | None = None,
    min_counter: int = 0,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedRelease:
    """Everything a device checks, on the host: structure, signature, hash, size, board, counter.

    The signature is checked before the manifest is trusted; the image hash after.
    """
    art = decode(data, limits)
    keyids = root.verify("release", art.manifest_bytes, art.signatures, "manifest")
    man = manifest_mod.parse(art.manifest_bytes, limits)
    if man.image_size != len(art.image):
        raise IntegrityError(
            f"image is {len(art.image)} bytes but the signed manifest says {man.image_size}"
        )
    if hashlib.sha256(art.image).hexdigest() != man.image_sha256:
        raise IntegrityError(
            "image SHA-256 does not match the signed manifest: the image was altered"
        )
    if man.files is not None:
        try:
            files = fileindex.read(art.image, man.files, limits)
            same = files == romfs.entries(art.image[: man.files.offset])
        except FormatError as e:
            raise IntegrityError(f"the image's file index is damaged: {e}") from e
        if not same:
            raise IntegrityError("the image's file index does not match its files")
    if board is not None and man.board != board:
        raise PolicyError(f"artifact is built for board {man.board!r}, not {board!r}")
    if man.counter < min_counter:
        raise PolicyError(
            f"security counter {man.counter} is below the device's {min_counter}: rollback refused"
        )
    return VerifiedRelease(man, keyids, art)
