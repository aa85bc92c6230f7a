# ECDSA P-256 key generation and signing in MicroPython, for keys born on the device.
#
#   generate() -> (priv, pub)          priv: 32-byte scalar d, big-endian, 1 <= d < n
#                                      pub: 65-byte SEC1 point 0x04||X||Y
#   public_key(priv) -> pub
#   sign(priv, digest, extra=None, check=True, pub=None) -> sig
#                                      sig: r||s, 32+32 bytes; s is made low (<= n/2)
#   sign_message(priv, msg, extra=None) -> sig   (digest = SHA-256 of msg)
#   der_signature(sig) -> bytes        the same signature as DER SEQUENCE { r, s }
#
# Randomness: os.urandom (the port's hardware generator: RP2040 ROSC, ESP32 RNG, STM32 RNG).
# A port without it (the QEMU MPS2 boards) cannot make keys: generate() and sign() raise
# OSError rather than use anything weaker. `urandom` below is that source (tests set it).
# Nonces: RFC 6979 (HMAC-SHA256 DRBG seeded with the key and the digest) with added entropy
# (RFC 6979 3.6: `extra`, 32 bytes of os.urandom unless given): a weak or repeated urandom
# output cannot repeat a nonce for two different digests, and a faulty DRBG state cannot
# leak the key through equal nonces. extra=b"" gives plain RFC 6979 (the tests use its
# published vectors). Every signature is checked with p256.verify before it is returned
# (check=False skips that): a signature computed under a fault must never leave the device.
# `pub` (the key's public point, if the caller has it) saves recomputing it for the check.
#
# NOT constant-time. MicroPython integers take time that depends on their values, and the
# scalar multiplication's additions follow the digits of the nonce. What that means per
# threat tier (docs/certificates.md): T0/T1, nothing changes: the key never leaves the
# device and nothing here answers a network request. A T1 attacker who could make the
# device sign many chosen messages AND time each signature precisely could in principle
# recover the key from nonce-timing leaks (as Minerva/TPM-FAIL did): the device signs only
# its CSR and rare authentication challenges, never on a peer's demand in a loop. T3
# (physical access: power/EM traces of a signature) is not resisted: a key made here is
# as strong as the board's flash protection (T3) and no stronger.

import hashlib
import os

import p256

_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF


def _no_urandom(n):
    raise OSError("no hardware random source (os.urandom) on this port")


urandom = getattr(os, "urandom", _no_urandom)


def _base_mul(k):
    # k G as an affine (x, y), for 0 < k < n, on the verifier's chain (assembly where
    # p256 has it). Not constant-time: the digits of k decide which additions run.
    if not 0 < k < _N:
        raise ValueError("scalar out of range")
    pa = []
    a = p256._naf(k, 6, pa)  # p256._WG: G's table
    n = len(a)
    b = bytes(n)  # no multiples of a key: only G's table is used
    if p256._F:
        X, Y, Z = p256._F.chain(None, a, b, n, pa, [])
    else:
        X, Y, Z = p256._chain(None, a, b, n)
    if not Z:
        raise ValueError("k G is the point at infinity")
    P = _P
    zi = p256._F.inv(Z) if p256._F else p256._inv(Z, P)
    zz = zi * zi % P
    return X * zz % P, Y * zz % P * zi % P


def _hmac(key, data):
    # HMAC-SHA256 (stock firmware has hashlib.sha256, not always hmac); key is 32 bytes
    k = key + bytes(32)
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in k))
    inner.update(data)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in k))
    outer.update(inner.digest())
    return outer.digest()


def _scalar(priv):
    if len(priv) != 32:
        raise ValueError("private key must be 32 bytes")
    d = int.from_bytes(priv, "big")
    if not 0 < d < _N:
        raise ValueError("private key out of range")
    return d


def _point(xy):
    return b"\x04" + xy[0].to_bytes(32, "big") + xy[1].to_bytes(32, "big")


def generate():
    while True:  # rejection sampling: uniform in [1, n-1]; a retry has odds 2^-32
        priv = urandom(32)
        d = int.from_bytes(priv, "big")
        if 0 < d < _N:
            return priv, _point(_base_mul(d))


def public_key(priv):
    return _point(_base_mul(_scalar(priv)))


def _nonces(priv, h1, extra):
    # RFC 6979 3.2 (HMAC-SHA256, qlen = 256) with additional data: k candidates
    v = b"\x01" * 32
    k = bytes(32)
    seed = priv + h1 + extra
    k = _hmac(k, v + b"\x00" + seed)
    v = _hmac(k, v)
    k = _hmac(k, v + b"\x01" + seed)
    v = _hmac(k, v)
    while True:
        v = _hmac(k, v)
        yield int.from_bytes(v, "big")
        k = _hmac(k, v + b"\x00")
        v = _hmac(k, v)


def sign(priv, digest, extra=None, check=True, pub=None):
    d = _scalar(priv)
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes")
    if extra is None:
        extra = urandom(32)
    e = int.from_bytes(digest, "big")
    h1 = (e % _N).to_bytes(32, "big")
    for k in _nonces(priv, h1, extra):
        if not 0 < k < _N:
            continue
        r = _base_mul(k)[0] % _N
        if not r:
            continue
        s = p256._inv(k, _N) * (e + r * d) % _N
        if not s:
            continue
        if s > _N >> 1:
            s = _N - s  # low s: accepted by strict verifiers (and by everyone else)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if check and not p256.verify(pub or public_key(priv), digest, sig):
            raise RuntimeError("signature failed its own check (fault): not released")
        return sig


def sign_message(priv, message, extra=None, check=True, pub=None):
    return sign(priv, hashlib.sha256(message).digest(), extra, check, pub)


def _der_int(b):
    b = b.lstrip(b"\x00") or b"\x00"
    if b[0] & 0x80:
        b = b"\x00" + b
    return b"\x02" + bytes((len(b),)) + b


def der_signature(sig):
    if len(sig) != 64:
        raise ValueError("signature must be 64 bytes")
    body = _der_int(sig[:32]) + _der_int(sig[32:])
    return b"\x30" + bytes((len(body),)) + body
