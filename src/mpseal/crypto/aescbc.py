"""AES-256 as the device's ``cryptolib.aes`` has it: CBC (mode 2) and ECB (mode 1), no padding.

Stock firmware has no CTR or GCM (checked on the unix port and stock RPI_PICO v1.28.0):
the formats that the device decrypts use only these two, on whole 16-byte blocks.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpseal.errors import UsageError

BLOCK = 16


def _check(key: bytes, data: bytes) -> None:
    if len(key) != 32:
        raise UsageError("an AES-256 key is 32 bytes")
    if len(data) % BLOCK:
        raise UsageError("AES without padding takes whole 16-byte blocks")


def cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    _check(key, data)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    _check(key, data)
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


def ecb_encrypt(key: bytes, data: bytes) -> bytes:
    _check(key, data)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # ECB of one random key (a key wrap)
    return enc.update(data) + enc.finalize()


def ecb_decrypt(key: bytes, data: bytes) -> bytes:
    _check(key, data)
    dec = Cipher(algorithms.AES(key), modes.ECB()).decryptor()  # ECB of one random key (a key wrap)
    return dec.update(data) + dec.finalize()


def padded(n: int) -> int:
    """``n`` rounded up to whole blocks."""
    return -(-n // BLOCK) * BLOCK
