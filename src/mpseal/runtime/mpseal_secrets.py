# Device secrets at rest (MicroPython): open /mpseal/secrets.bin, made by the host
# for this device only (src/mpseal/crypto/secretbox.py has the format and says
# plainly what it protects: a copy of the storage does not open, since the key is
# machine.unique_id(), read from the chip, never stored; code running on the device
# can still read the secrets).
#
#   import mpseal_secrets; cfg = mpseal_secrets.load(); cfg["wifi_password"]

import hashlib
import json

import mpseal_port

PATH = "/mpseal/secrets.bin"
MAX_LEN = 4096


class SecretsError(Exception):
    pass


def _hmac(key, msg):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def open_sealed(data, hardware_id):
    import cryptolib

    if len(data) > MAX_LEN or len(data) < 40 + 16 + 32 or data[:4] != b"MPSS" or data[4] != 1:
        raise SecretsError("not an mpseal secrets file")
    body, mac = data[:-32], data[-32:]
    salt, iv, ct = body[8:24], body[24:40], body[40:]
    key = hashlib.sha256(b"mpseal-secrets-v1" + hardware_id.encode() + salt).digest()
    mac_key = hashlib.sha256(b"mpseal-mac" + key).digest()
    diff = 0
    for a, b in zip(_hmac(mac_key, body), mac):
        diff |= a ^ b
    if diff or len(ct) % 16:
        raise SecretsError("secrets do not open: altered, or made for another device")
    pt = cryptolib.aes(key, 2, iv).decrypt(ct)
    pad = pt[-1]
    if not 1 <= pad <= 16 or pt[-pad:] != bytes([pad]) * pad:
        raise SecretsError("secrets have bad padding")
    return pt[:-pad]


def load(path=PATH):
    """The device's secrets as a dict; SecretsError if they are missing or not its own."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LEN + 1)
    except OSError:
        raise SecretsError("no secrets on this device")
    return json.loads(open_sealed(data, mpseal_port.unique_id()))
