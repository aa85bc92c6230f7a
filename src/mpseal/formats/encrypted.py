"""Releases encrypted at rest and in transit, opened only by the device they were wrapped for.

An encrypted release is an ordinary artifact (artifact.py) whose signed manifest has
``image.format = "romfs-aes256cbc"``, ``files`` null and an ``encrypted`` object
(manifest.py). Its image, as stored and downloaded, is

    IV (16 random bytes) ‖ AES-256-CBC(K, IV, table ‖ 0-pad to 16 ‖ ROMFS ‖ 0-pad to 16)

``K`` is a random key made for this release only. ``table`` is the file index a plain
release has at the end of its image (fileindex.py: path, size, offset, sha256 of each
file, offsets into the plaintext ROMFS image, each relative to the previous entry's), so
file names, sizes and contents are all inside the ciphertext. The signed manifest keeps
the SHA-256 of the stored (encrypted) image, the SHA-256 and size of the plaintext
table, and the ROMFS size: the guard checks the signature, then the image hash, then
that the table it decrypted has the signed hash, then each file's plaintext against its
SHA-256 in that table before serving it.

CBC gives random access by block: the plaintext block ``i`` needs only ciphertext
blocks ``i-1`` and ``i`` (the IV is block -1), so the device decrypts one file at a time
(runtime/mpseal_appfs.py), in RAM that follows the largest file, not the image.

**The key, per device (key record, 40 bytes, appended to the slot on the device):**

    "MPSK" | version 1 | 3 zero bytes | AES-256-ECB(KEK, K)  (two blocks)
    KEK = SHA-256("mpseal-release-key-v1" ‖ hardware id (hex, ASCII) ‖ image SHA-256 (32 bytes))

The hardware id is the device's ``machine.unique_id()`` in hex, which the device reads
from the chip at run time and never writes to its filesystem (as for the sealed
secrets, crypto/secretbox.py). The server knows it from its registry, so it wraps ``K``
for each device without holding per-device secrets and without re-encrypting the image:
every device downloads the same encrypted bytes (a CDN may cache them), and the check
reply carries its own key record. A wrong record (another device's, altered) decrypts a
table whose hash does not match, which the device reports as "does not open".

Threat tier: T0 with a copy of the storage (an SD card, a USB drive, a littlefs dump, or
the slot files moved to another board) sees only ciphertext: names, sizes and contents
of the files are hidden (the total size and the signed manifest's app, version, board,
entry module and build facts are not). It does NOT stop code running on the device
(it can read the id and the plaintext), anyone who learns the hardware id (on ESP32 it
is the public Wi-Fi MAC; the fleet registry holds every id; a stolen update server has
the release keys too: T2), nor T3 without the chip's flash encryption.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import replace

from mpseal.crypto import aescbc
from mpseal.errors import FormatError, IntegrityError, UsageError
from mpseal.formats import fileindex, romfs
from mpseal.formats.manifest import Encryption, FileEntry, Manifest
from mpseal.limits import DEFAULT_LIMITS, Limits

KEY_LENGTH = 32
# The publisher sends an encrypted release's key to the update server in this header of
# the publish request (not the query string, which access logs keep).
PUBLISH_HEADER = "x-mpseal-release-key"
RECORD_MAGIC = b"MPSK"
RECORD_VERSION = 1
RECORD = struct.Struct("<4sB3s32s")
RECORD_LENGTH = RECORD.size  # 40
_KEK_LABEL = b"mpseal-release-key-v1"


def new_key() -> bytes:
    return secrets.token_bytes(KEY_LENGTH)


def encrypt(
    plain: Manifest, image: bytes, key: bytes, iv: bytes | None = None
) -> tuple[Manifest, bytes]:
    """The manifest to sign and the image to store for plain release (``plain``, ``image``)."""
    if len(key) != KEY_LENGTH:
        raise UsageError("a release key is 32 bytes")
    ref = plain.files
    if plain.encrypted is not None or ref is None:
        raise UsageError("only a plain release with a file index can be encrypted")
    rom, table = image[: ref.offset], image[ref.offset :]
    iv = iv or secrets.token_bytes(16)
    body = _pad(table) + _pad(rom)
    stored = iv + aescbc.cbc_encrypt(key, iv, body)
    enc = Encryption(hashlib.sha256(table).hexdigest(), len(table), len(rom))
    outer = replace(
        plain,
        image_sha256=hashlib.sha256(stored).hexdigest(),
        image_size=len(stored),
        files=None,
        encrypted=enc,
    )
    return outer, stored


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (aescbc.padded(len(data)) - len(data))


def open_table(
    man: Manifest, stored: bytes, key: bytes, limits: Limits = DEFAULT_LIMITS
) -> tuple[FileEntry, ...]:
    """The file table of encrypted image ``stored`` (already checked against ``man``)."""
    enc = _encryption(man, stored)
    tlen = aescbc.padded(enc.table_size)
    plain = aescbc.cbc_decrypt(key, stored[:16], stored[16 : 16 + tlen])[: enc.table_size]
    if hashlib.sha256(plain).hexdigest() != enc.table_sha256:
        raise IntegrityError(
            "the encrypted release does not open with this key (a key made for another "
            "device or release, or an altered key record)"
        )
    return fileindex.parse(plain, enc.romfs_size, limits)


def decrypt(
    man: Manifest, stored: bytes, key: bytes, limits: Limits = DEFAULT_LIMITS
) -> tuple[tuple[FileEntry, ...], bytes]:
    """The file table and the plaintext ROMFS image, each file checked against its hash."""
    enc = _encryption(man, stored)
    files = open_table(man, stored, key, limits)
    start = 16 + aescbc.padded(enc.table_size)
    image = aescbc.cbc_decrypt(key, stored[start - 16 : start], stored[start:])[: enc.romfs_size]
    if files != romfs.entries(image):
        raise IntegrityError("the encrypted release's file table does not match its image")
    for name, size, off, sha in files:
        if hashlib.sha256(image[off : off + size]).hexdigest() != sha:
            raise IntegrityError(f"file {name} of the encrypted release does not match its hash")
    return files, image


def _encryption(man: Manifest, stored: bytes) -> Encryption:
    if man.encrypted is None:
        raise UsageError("this release is not encrypted")
    if len(stored) != man.encrypted.stored_size:
        raise FormatError("the encrypted image is not the size its manifest says")
    return man.encrypted


def kek(hardware_id: str, image_sha256: str) -> bytes:
    """The key that wraps a release key for one device (see the module docstring)."""
    if not hardware_id:
        raise UsageError("wrapping a release key needs the device's hardware id")
    return hashlib.sha256(_KEK_LABEL + hardware_id.encode() + bytes.fromhex(image_sha256)).digest()


def wrap(key: bytes, hardware_id: str, image_sha256: str) -> bytes:
    """The 40-byte key record that gives device ``hardware_id`` this release's key."""
    if len(key) != KEY_LENGTH:
        raise UsageError("a release key is 32 bytes")
    wrapped = aescbc.ecb_encrypt(kek(hardware_id, image_sha256), key)
    return RECORD.pack(RECORD_MAGIC, RECORD_VERSION, b"\0\0\0", wrapped)


def unwrap(record: bytes, hardware_id: str, image_sha256: str) -> bytes:
    """The release key from a key record (a wrong device gives a key that opens nothing)."""
    if len(record) != RECORD_LENGTH:
        raise FormatError(f"a key record is {RECORD_LENGTH} bytes, not {len(record)}")
    magic, version, res, wrapped = RECORD.unpack(record)
    if magic != RECORD_MAGIC or version != RECORD_VERSION or res != b"\0\0\0":
        raise FormatError("not an mpseal key record")
    return aescbc.ecb_decrypt(kek(hardware_id, image_sha256), wrapped)


def split_slot(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, bytes]:
    """A device's slot file -> (the artifact, the key record after its image)."""
    artifact_end = _artifact_end(data)
    if len(data) - artifact_end != RECORD_LENGTH:
        raise FormatError("the slot does not end with one key record after the image")
    if artifact_end > limits.artifact_max_length:
        raise FormatError("the slot's artifact is larger than the artifact limit")
    return data[:artifact_end], data[artifact_end:]


def _artifact_end(data: bytes) -> int:
    if len(data) < 32:
        raise FormatError("the slot is truncated")
    offset, length = struct.unpack_from("<II", data, 20)  # artifact.py: image offset, length
    return int(offset) + int(length)
