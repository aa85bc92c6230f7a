# The encrypted release's part of the verified-files mount (mpseal_appfs; the format is
# src/mpseal/formats/encrypted.py): the release key unwrapped from the key record under a
# key derived from machine.unique_id() read at run time (never stored), the file index
# decrypted and checked against its signed hash, and each file decrypted when it is opened
# (AES-256-CBC from the block before it, in place: RAM about twice the file, not the
# image). Loaded only for an encrypted release: a plain boot spends neither time nor RAM
# on it.

import hashlib

from mpseal_appfs import parse_index
from mpseal_port import Refused  # (mpseal_release.Refused; nothing of that module is kept)


def _pad16(n):
    return (n + 15) // 16 * 16


def unwrap(record, hardware_id, image_sha256):
    """The release key from its 40-byte key record (as the host's formats/encrypted.py)."""
    import cryptolib

    if record is None or len(record) != 40 or record[:8] != b"MPSK\x01\0\0\0":
        raise Refused("the encrypted release has no key record for this device")
    kek = hashlib.sha256(b"mpseal-release-key-v1" + hardware_id.encode()
                         + bytes.fromhex(image_sha256)).digest()
    return cryptolib.aes(kek, 1).decrypt(record[8:])


def open_release(slot_path, rel, hardware_id):
    """Key and file index of encrypted release `rel` (verified: signature, image hash) in
    its slot; Refused when it does not open on this device. Sets rel.key and rel.files
    (the index: bytes, entry positions, file offsets, folders)."""
    import cryptolib

    key = unwrap(rel.key_record, hardware_id, rel.sha256)
    sha, size, romfs_size = rel.enc
    with open(slot_path, "rb") as f:
        f.seek(rel.offset)
        iv = f.read(16)
        ct = f.read(_pad16(size))
    if len(iv) != 16 or len(ct) != _pad16(size):
        raise Refused("the encrypted release is truncated in the slot")
    table = cryptolib.aes(key, 2, iv).decrypt(ct)[:size]
    ct = None
    if hashlib.sha256(table).digest() != bytes.fromhex(sha):
        raise Refused("the encrypted release does not open on this device (its key was "
                      "wrapped for another device, or the slot was copied from one)")
    pos, offs, dirs = parse_index(table, romfs_size)  # checked as the mount will use it
    rel.key = key
    rel.files = (table, pos, offs, dirs)
    return rel


def decrypt(slot, key, base, p, size, off):
    """File `p` of an encrypted release opened with `key`, in slot file `slot` (its
    ROMFS image after the index at `base`): the plaintext bytes off..off+size, unchecked
    (the caller checks them against the signed hash)."""
    # The plaintext bytes off..off+size: whole blocks from the one holding `off`, and
    # the ciphertext block before it as the IV (the table's last block, or the IV).
    import cryptolib

    b = off - off % 16
    e = _pad16(off + size)
    if e == b:
        return b""
    buf = bytearray(e - b + 16)
    with open(slot, "rb") as src:
        src.seek(base + b)
        got = src.readinto(buf)
    if got != len(buf):
        raise Refused("file %s is truncated in the slot" % p)
    mv = memoryview(buf)
    ct = mv[16:]
    cryptolib.aes(key, 2, bytes(mv[:16])).decrypt(ct, ct)  # in place
    at = 16 + off - b
    out = bytes(mv[at : at + size])  # bytes: served without another copy
    mv = ct = buf = None
    return out
