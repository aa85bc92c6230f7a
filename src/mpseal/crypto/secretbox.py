"""Device secrets at rest: a small file only the device it was made for can open.

    magic "MPSS" | version 1 | 3 reserved zero bytes | salt 16 | iv 16 |
    ciphertext (AES-256-CBC, PKCS#7) | HMAC-SHA256 over everything before it

    K       = SHA-256("mpseal-secrets-v1" || hardware id || salt)   (AES-256 key)
    mac key = SHA-256("mpseal-mac" || K)

The hardware id is the device's ``machine.unique_id()`` (hex). The device opens
the file with ``runtime/mpseal_secrets.py`` (``cryptolib`` AES-CBC, HMAC written
with ``hashlib``).

Threat tier, honestly: this stops T0 with a copy of the storage — a filesystem
dump, an SD card or USB drive read on a PC, or the files moved to another board:
the hardware id is read from the chip at run time and provisioning writes it
nowhere on the filesystem (not in config.json, the provisioning marker or the
certificate's name; tests/test_ota_attacks.py checks a dump), so the copy does
not open, and tampering is detected. It does NOT stop anyone who can run code on
the device (they call machine.unique_id()), anyone who learns the id some other
way (on ESP32 it is the Wi-Fi MAC address, which is broadcast; the fleet
registry holds it), nor T3: for that, ESP32 flash/NVS encryption or an RP2350's
OTP keys are needed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpseal.errors import FormatError, IntegrityError, UsageError

MAGIC = b"MPSS"
VERSION = 1
HEADER_LEN = 8 + 16 + 16
MAC_LEN = 32
MAX_LEN = 4096


def _keys(hardware_id: str, salt: bytes) -> tuple[bytes, bytes]:
    k = hashlib.sha256(b"mpseal-secrets-v1" + hardware_id.encode() + salt).digest()
    return k, hashlib.sha256(b"mpseal-mac" + k).digest()


def seal(
    plaintext: bytes, hardware_id: str, salt: bytes | None = None, iv: bytes | None = None
) -> bytes:
    if not hardware_id:
        raise UsageError("secrets need the device's hardware id")
    salt = salt or secrets.token_bytes(16)
    iv = iv or secrets.token_bytes(16)
    key, mac_key = _keys(hardware_id, salt)
    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = MAGIC + bytes([VERSION, 0, 0, 0]) + salt + iv + enc.update(data) + enc.finalize()
    out = body + hmac.new(mac_key, body, hashlib.sha256).digest()
    if len(out) > MAX_LEN:
        raise UsageError(f"secrets are {len(out)} bytes sealed; the limit is {MAX_LEN}")
    return out


def open_(sealed: bytes, hardware_id: str) -> bytes:
    """The host-side twin of the device's reader (for tests and audits)."""
    if len(sealed) > MAX_LEN or len(sealed) < HEADER_LEN + 16 + MAC_LEN:
        raise FormatError("sealed secrets have an impossible size")
    if sealed[:4] != MAGIC or sealed[4] != VERSION:
        raise FormatError("not an mpseal secrets file")
    body, mac = sealed[:-MAC_LEN], sealed[-MAC_LEN:]
    salt, iv = body[8:24], body[24:40]
    key, mac_key = _keys(hardware_id, salt)
    if not hmac.compare_digest(hmac.new(mac_key, body, hashlib.sha256).digest(), mac):
        raise IntegrityError("secrets do not open: altered, or made for another device")
    ct = body[HEADER_LEN:]
    if len(ct) % 16:
        raise FormatError("sealed secrets are truncated")
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(dec.update(ct) + dec.finalize()) + unpadder.finalize()
    except ValueError:
        raise IntegrityError("sealed secrets have bad padding") from None
