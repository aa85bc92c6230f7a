# ECDSA P-256 + SHA-256 signature verification in pure MicroPython.
#
# Stock MicroPython firmware has no signature API; the boot guard verifies with this.
#
#   verify(pub, digest, sig) -> bool       pub: 65-byte SEC1 point 0x04||X||Y
#   verify_message(pub, msg, sig) -> bool  digest: SHA-256 of the message (32 bytes)
#   check_pubkey(pub) -> bool              sig: r||s, 32+32 bytes big-endian
#   PublicKey(pub)                         raises ValueError for a bad key; its .verify()
#                                          and .verify_message() reuse the key's table
#
# verify* return False for any bad input (wrong type or length, r or s outside [1, n-1],
# a point off the curve or not uncompressed, coordinates >= p); only MemoryError passes
# through. High s is accepted, as OpenSSL and mbedTLS do. Nothing here is secret, so
# nothing needs to run in constant time.
#
# Method: u1*G + u2*Q in one chain of doublings (Shamir's trick), u1 and u2 in width-w NAF,
# Jacobian coordinates with the a = -3 doubling, only affine points added: G's odd multiples
# are constants below, Q's are computed per key and made affine with one inversion. x(R) is
# checked as X == r*Z^2 (mod p), so the chain needs no inversion. Inversion is the extended
# Euclidean algorithm: in MicroPython it is several times faster than pow(a, m - 2, m).
#
# Field arithmetic: on ARM ports with the inline assembler (rp2, stm32, the QEMU boards)
# p256_fast runs the chain and the key's table on p256_thumb (Thumb-1 assembly, shipped
# precompiled for the board) over 32-byte buffers; elsewhere (the unix port, esp32) or if
# either module is missing or fails its self-test, Python integers do it. FAST says which.
# Both give the same answers (tests/test_runtime_p256.py).
#
# Cost (benchmarks/p256_cost.py, unix port, x86-64): ~7 ms, ~53 M instructions per verify.
# Cortex-M3 (QEMU MPS2-AN385, exact counts; benchmarks/device.py): one verify() is 47.4 M
# instructions on Python integers, 8.1 M with p256_thumb (the key's table 1.1 M of it);
# RP2040 (virtual Pico): 79.7 M and 12.5 M cycles.
# Memory: imported from .mpy the module holds ~9 KB of heap (frozen: none), a PublicKey
# ~2.3 KB; verify runs in a 32 KB heap. Compiling this .py on the device needs ~38 KB.

import hashlib

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_P = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF)
_N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)
_B = const(0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B)
_WG = const(6)  # NAF width for u1: uses G, 3G, .., 31G (the table below)
_WQ = const(5)  # NAF width for u2: uses Q, 3Q, .., 15Q (computed per key)

# x, y of G, 3G, 5G, .., 31G (affine), 32 bytes big-endian each, as one bytes constant:
# loading 32 integer constants from the .mpy cost ~4 ms per boot on a Pico, these bytes
# nothing; _g_odd() makes the integers for the Python-integer path, p256_fast its table.
# tests/test_runtime_p256.py recomputes them.
_G_BYTES = (
    # 1G
    b"\x6b\x17\xd1\xf2\xe1\x2c\x42\x47\xf8\xbc\xe6\xe5\x63\xa4\x40\xf2\x77\x03\x7d\x81\x2d\xeb\x33\xa0\xf4\xa1\x39\x45\xd8\x98\xc2\x96"
    b"\x4f\xe3\x42\xe2\xfe\x1a\x7f\x9b\x8e\xe7\xeb\x4a\x7c\x0f\x9e\x16\x2b\xce\x33\x57\x6b\x31\x5e\xce\xcb\xb6\x40\x68\x37\xbf\x51\xf5"
    # 3G
    b"\x5e\xcb\xe4\xd1\xa6\x33\x0a\x44\xc8\xf7\xef\x95\x1d\x4b\xf1\x65\xe6\xc6\xb7\x21\xef\xad\xa9\x85\xfb\x41\x66\x1b\xc6\xe7\xfd\x6c"
    b"\x87\x34\x64\x0c\x49\x98\xff\x7e\x37\x4b\x06\xce\x1a\x64\xa2\xec\xd8\x2a\xb0\x36\x38\x4f\xb8\x3d\x9a\x79\xb1\x27\xa2\x7d\x50\x32"
    # 5G
    b"\x51\x59\x0b\x7a\x51\x51\x40\xd2\xd7\x84\xc8\x56\x08\x66\x8f\xdf\xef\x8c\x82\xfd\x1f\x5b\xe5\x24\x21\x55\x4a\x0d\xc3\xd0\x33\xed"
    b"\xe0\xc1\x7d\xa8\x90\x4a\x72\x7d\x8a\xe1\xbf\x36\xbf\x8a\x79\x26\x0d\x01\x2f\x00\xd4\xd8\x08\x88\xd1\xd0\xbb\x44\xfd\xa1\x6d\xa4"
    # 7G
    b"\x8e\x53\x3b\x6f\xa0\xbf\x7b\x46\x25\xbb\x30\x66\x7c\x01\xfb\x60\x7e\xf9\xf8\xb8\xa8\x0f\xef\x5b\x30\x06\x28\x70\x31\x87\xb2\xa3"
    b"\x73\xeb\x1d\xbd\xe0\x33\x18\x36\x6d\x06\x9f\x83\xa6\xf5\x90\x00\x53\xc7\x36\x33\xcb\x04\x1b\x21\xc5\x5e\x1a\x86\xc1\xf4\x00\xb4"
    # 9G
    b"\xea\x68\xd7\xb6\xfe\xdf\x0b\x71\x87\x89\x38\xd5\x1d\x71\xf8\x72\x9e\x0a\xcb\x8c\x2c\x6d\xf8\xb3\xd7\x9e\x8a\x4b\x90\x94\x9e\xe0"
    b"\x2a\x27\x44\xc9\x72\xc9\xfc\xe7\x87\x01\x4a\x96\x4a\x8e\xa0\xc8\x4d\x71\x4f\xea\xa4\xde\x82\x3f\xe8\x5a\x22\x4a\x4d\xd0\x48\xfa"
    # 11G
    b"\x3e\xd1\x13\xb7\x88\x3b\x4c\x59\x06\x38\x37\x9d\xb0\xc2\x1c\xda\x16\x74\x2e\xd0\x25\x50\x48\xbf\x43\x33\x91\xd3\x74\xbc\x21\xd1"
    b"\x90\x99\x20\x9a\xcc\xc4\xc8\xa2\x24\xc8\x43\xaf\xa4\xf4\xc6\x8a\x09\x0d\x04\xda\x5e\x98\x89\xda\xe2\xf8\xee\xfc\xe8\x2a\x37\x40"
    # 13G
    b"\x17\x7c\x83\x7a\xe0\xac\x49\x5a\x61\x80\x5d\xf2\xd8\x5e\xe2\xfc\x79\x2e\x28\x4b\x65\xea\xd5\x8a\x98\xe1\x5d\x9d\x46\x07\x2c\x01"
    b"\x63\xbb\x58\xcd\x4e\xbe\xa5\x58\xa2\x40\x91\xad\xb4\x0f\x4e\x72\x26\xee\x14\xc3\xa1\xfb\x4d\xf3\x9c\x43\xbb\xe2\xef\xc7\xbf\xd8"
    # 15G
    b"\xf0\x45\x4d\xc6\x97\x1a\xba\xe7\xad\xfb\x37\x89\x99\x88\x82\x65\xae\x03\xaf\x92\xde\x3a\x0e\xf1\x63\x66\x8c\x63\xe5\x9b\x9d\x5f"
    b"\xb5\xb9\x3e\xe3\x59\x2e\x2d\x1f\x4e\x65\x94\xe5\x1f\x96\x43\xe6\x2a\x3b\x21\xce\x75\xb5\xfa\x3f\x47\xe5\x9c\xde\x0d\x03\x4f\x36"
    # 17G
    b"\x47\x77\x69\x04\xc0\xf1\xcc\x3a\x9c\x09\x84\xb6\x6f\x75\x30\x1a\x5f\xa6\x86\x78\xf0\xd6\x4a\xf8\xba\x1a\xbc\xe3\x47\x38\xa7\x3e"
    b"\xaa\x00\x5e\xe6\xb5\xb9\x57\x28\x62\x31\x85\x65\x77\x64\x8e\x83\x81\xb2\x80\x44\x28\xd5\x73\x3f\x32\xf7\x87\xff\x71\xf1\xfc\xdc"
    # 19G
    b"\xcb\x6d\x28\x61\x10\x2c\x0c\x25\xce\x39\xb7\xc1\x71\x08\xc5\x07\x78\x2c\x45\x22\x57\x88\x48\x95\xc1\xfc\x7b\x74\xab\x03\xed\x83"
    b"\x58\xd7\x61\x4b\x24\xd9\xef\x51\x5c\x35\xe7\x10\x0d\x6d\x6c\xe4\xa4\x96\x71\x6e\x30\xfa\x3e\x03\xe3\x91\x50\x75\x2b\xce\xcd\xaa"
    # 21G
    b"\x32\x50\xfc\xf6\x86\x63\x7c\x7b\x2e\x4a\xc8\x6e\xb4\x73\xbc\xa5\x3a\x58\x21\x39\xf4\x2b\x15\x23\xfd\x76\x36\x4e\x67\x39\x9e\x83"
    b"\x42\xe7\xc3\x42\x66\x7d\x35\x93\x97\xb3\x09\x0d\x1d\x7e\xb8\x8c\x89\x7c\xd3\xc3\x3b\x56\x6a\x82\x15\xde\x24\xa0\x71\xd4\x8c\x09"
    # 23G
    b"\x0e\x91\xc7\x23\x9c\x26\x40\xd7\xd2\x8a\x3e\x39\xd4\x58\x3f\xa6\x3c\x0b\xc0\xa5\xdf\x64\xa4\xfe\x67\x2e\x57\x30\x45\xca\x78\x96"
    b"\x5d\xf6\x5c\x3b\x55\x0d\xba\x22\x1a\x22\x73\x3b\xb8\xe0\xbd\x6d\x7e\x68\x83\x35\x75\xe7\xa5\xae\x13\x80\x46\x54\x31\x40\xad\x55"
    # 25G
    b"\x3a\x67\xe2\x55\x4b\x0c\x0b\xb6\x85\xf4\xf5\x2d\x8c\x07\xfa\x84\x41\x65\x2f\xc5\xb7\x6f\x1b\x24\x84\xa4\xdc\x45\xf2\x00\xd6\x87"
    b"\x27\xd0\xf1\x87\x2f\x1f\xcf\x43\x26\xda\xf2\x67\x16\x3a\xfb\x0d\x8c\x18\x8a\xf7\x35\xa7\x61\x8a\xa9\xed\x16\xb3\x02\xf7\x93\x24"
    # 27G
    b"\x18\x4f\xfa\x58\x19\xd8\x0d\x51\xde\xba\x2f\xac\x46\x11\xf3\x78\x57\x63\x55\xbd\x68\x3e\x54\xab\xf2\xe2\x01\x17\x3b\x08\x83\xd1"
    b"\xc0\xa6\x6e\x27\x66\x88\xf3\x59\xa4\xc6\xd9\x08\x26\xcb\x99\x95\x45\xbd\xec\xcc\x63\xf0\x49\x16\x20\xd2\x42\xc2\x60\x90\x6e\x6f"
    # 29G
    b"\xd6\xd3\x3a\xde\xfa\x19\x5b\x07\xa7\xc3\x6d\xa0\x90\x85\x3b\x8c\xfd\x8c\xd1\xc6\x88\xb5\x8a\x41\xde\xdd\x69\x3d\x1c\x78\x4d\xef"
    b"\x84\xaa\xba\x16\xee\x19\x5d\x7e\x3f\x78\x24\x5f\x55\x8a\x5d\xcb\x09\xa1\x66\xab\x4b\x95\xed\xed\x55\x0c\x12\x45\x93\xd1\xbc\xa6"
    # 31G
    b"\x30\x1d\x9e\x50\x2d\xc7\xe0\x5d\xa8\x5d\xa0\x26\xa7\xae\x9a\xa0\xfa\xc9\xdb\x7d\x52\xa9\x5b\x3e\x3e\x3f\x9a\xa0\xa1\xb4\x5b\x8b"
    b"\x65\x51\xb6\xf6\xb3\x06\x12\x23\xe0\xd2\x3c\x02\x6b\x01\x7d\x72\x29\x8d\x9a\xe4\x68\x87\xca\x61\xd5\x8d\xb6\xae\xa1\x7e\xe2\x67"
)
_G_ODD = None  # [x1, y1, x3, y3, ..] as integers, made by _g_odd() when first needed


def _g_odd():
    global _G_ODD
    if _G_ODD is None:
        b = _G_BYTES
        t = [0] * (len(b) // 32)  # one allocation: a growing list or a generator fragments
        for i in range(len(t)):  # a small heap (tests/test_guard.py, the 36 KB one)
            t[i] = int.from_bytes(b[32 * i : 32 * i + 32], "big")
        _G_ODD = t
    return _G_ODD


try:  # the assembly path (ARM boards: p256_fast imports p256_thumb and tests it)
    import p256_fast as _F
except Exception:  # no inline assembler (SyntaxError), no module, wrong .mpy arch
    _F = None
FAST = _F is not None
if not FAST:  # the integers now, where the Python-integer path will need them
    _g_odd()
    _G_BYTES = None


def _inv(a, m):
    # a^-1 mod m for 0 < a < m, m prime (extended Euclid)
    x0, x1, r0, r1 = 0, 1, m, a
    while r1:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        x0, x1 = x1, x0 - q * x1
    return x0 % m


def _naf(k, w, pos=None):
    # width-w NAF of 0 <= k < 2^256, least significant digit first; digit d stored as
    # d & 0xFF. Reads k's bits from bytes with small integers: shifting k itself once per
    # digit or zero costs a big-integer operation each (~4x slower on the device).
    # v = (k >> i) + c (mod 2^w): c is the carry a negative digit leaves. pos, a list,
    # gets the positions of the nonzero digits.
    full = 1 << w
    half = full >> 1
    mask = full - 1
    kb = k.to_bytes(36, "little")
    n = 32  # bits to read: up to k's top byte (MicroPython has no int.bit_length)
    while n and not kb[n - 1]:
        n -= 1
    n *= 8
    out = bytearray(n + w + 1)  # zeros, one allocation (growing it needs twice the heap)
    i = 0
    c = 0
    while i < n or c:
        j = i >> 3
        v = (((kb[j] | (kb[j + 1] << 8)) >> (i & 7)) & mask) + c
        if v & 1:
            d = v - full if v > half else v
            c = 1 if d < 0 else 0
            if pos is not None:
                pos.append(i)
            out[i] = d & 0xFF
            i += w  # after a nonzero digit come w - 1 zeros
        else:  # v even: the carry, if any, stays
            i += 1
    return out


def _double(X, Y, Z):
    # 2 * (X, Y, Z) in Jacobian coordinates, a = -3 (the same steps are inlined in _verify)
    P = _P
    t = Z * Z % P
    m = (X - t) * (X + t) * 3 % P  # 3 (X^2 - Z^4)
    Z = (Y + Y) * Z % P
    t = Y * Y % P
    s = (X << 2) * t % P  # 4 X Y^2
    X = (m * m - s - s) % P
    return X, (m * (s - X) - (t * t << 3)) % P, Z


def _add(X, Y, Z, x, y):
    # (X, Y, Z) + affine (x, y); these steps use neither a nor b of the curve
    if not Z:
        return x, y, 1
    P = _P
    zz = Z * Z % P
    h = (x * zz - X) % P
    u = (y * zz % P * Z - Y) % P
    if not h:
        return _double(X, Y, Z) if not u else (0, 1, 0)
    zz = h * h % P
    t = h * zz % P
    v = X * zz % P
    x = (u * u - t - 2 * v) % P
    return x, (u * (v - x) - Y * t) % P, Z * h % P


def _odd_multiples(x, y):
    # [x1, y1, x3, y3, ..] of Q, 3Q, .., (2^(_WQ-1) - 1)Q, affine, for Q = (x, y)
    P = _P
    X2, Y2, lam = _double(x, y, 1)
    # Work on the isomorphic curve where 2Q = (X2, Y2) is affine, so _add can add it:
    # (x, y) maps to (x lam^2, y lam^3), and its Jacobian (X, Y, Z) is (X, Y, Z lam) here.
    # _add never meets its doubling case: kQ = +-2Q for odd k < 16 would need n | k -+ 2.
    t = lam * lam % P
    pts = [(x * t % P, y * t % P * lam % P, 1)]
    for _ in range((1 << (_WQ - 2)) - 1):
        X, Y, Z = pts[-1]
        pts.append(_add(X, Y, Z, X2, Y2))
    # One inversion for all Z (Montgomery's trick).
    acc = 1
    prefix = []
    for pt in pts:
        prefix.append(acc)
        acc = acc * pt[2] % P
    inv = _inv(acc * lam % P, P)  # 1 / (lam Z0 Z1 ..)
    out = [0] * (2 * len(pts))
    for i in range(len(pts) - 1, -1, -1):
        X, Y, Z = pts[i]
        zi = inv * prefix[i] % P  # 1 / (Z lam)
        inv = inv * Z % P
        t = zi * zi % P
        out[2 * i] = X * t % P
        out[2 * i + 1] = Y * t % P * zi % P
    return out


def _decode(pub):
    # (x, y) of a valid uncompressed P-256 point, else None
    if len(pub) != 65 or pub[0] != 4:
        return None
    x = int.from_bytes(pub[1:33], "big")
    y = int.from_bytes(pub[33:65], "big")
    if x >= _P or y >= _P or (y * y - (x * x - 3) * x - _B) % _P:
        return None
    return x, y


def _verify(q_table, digest, sig):
    if len(digest) != 32 or len(sig) != 64:
        return False
    N = _N
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    w = _inv(s, N)
    pa = []
    pb = []
    a = _naf(int.from_bytes(digest, "big") * w % N, _WG, pa)  # u1 = e / s
    b = _naf(r * w % N, _WQ, pb)  # u2 = r / s
    n = max(len(a), len(b))
    a.extend(bytes(n - len(a)))
    b.extend(bytes(n - len(b)))
    P = _P
    if q_table[0] is not None:  # the assembly chain: (q_table[0] is the key's buffers)
        X, _, Z = _F.chain(q_table[0], a, b, n, pa, pb)
    else:
        X, _, Z = _chain(q_table[1], a, b, n)
    if not Z:
        return False
    # x(R) = X / Z^2 < p < 2n, so x(R) mod n == r means x(R) is r or r + n.
    zz = Z * Z % P
    while r < P:
        if (r * zz - X) % P == 0:
            return True
        r += N
    return False


def _chain(q_table, a, b, n):
    # (X, Y, Z) of u1 G + u2 Q over the digit strings a, b (Z == 0: the point at infinity)
    digits = (a, b)
    tables = (_g_odd(), q_table)
    P = _P
    X = Y = Z = 0  # Z == 0: the point at infinity
    for i in range(n - 1, -1, -1):
        if Z:  # (X, Y, Z) = 2 (X, Y, Z), as in _double
            t = Z * Z % P
            m = (X - t) * (X + t) * 3 % P
            Z = (Y + Y) * Z % P
            t = Y * Y % P
            s = (X << 2) * t % P
            X = (m * m - s - s) % P
            Y = (m * (s - X) - (t * t << 3)) % P
        for k in range(2):
            d = digits[k][i]
            if not d:
                continue
            table = tables[k]
            if d < 128:
                x = table[d - 1]
                y = table[d]
            else:  # negative digit: add -(|d| Point)
                x = table[255 - d]
                y = P - table[256 - d]
            if not Z:
                X, Y, Z = x, y, 1
                continue
            # (X, Y, Z) += (x, y), as in _add (inlined: calls cost time and memory)
            zz = Z * Z % P
            h = (x * zz - X) % P
            u = (y * zz % P * Z - Y) % P
            if not h:
                if u:
                    Z = 0
                else:
                    X, Y, Z = _double(X, Y, Z)
                continue
            zz = h * h % P
            t = h * zz % P
            v = X * zz % P
            X = (u * u - t - 2 * v) % P
            Y = (u * (v - X) - Y * t) % P
            Z = Z * h % P
    return X, Y, Z


def _safely(f):
    # f() for an API entry point: untrusted input never raises, only MemoryError does
    try:
        return f()
    except MemoryError:
        raise
    except Exception:
        return False


class PublicKey:
    # A checked key and its odd multiples: build once, verify many times.

    def __init__(self, pub):
        q = _decode(pub)
        if q is None:
            raise ValueError("not an uncompressed P-256 public key")
        if _F:
            self._table = (_F.table(_F.odd_multiples(q[0], q[1])), None)
        else:
            self._table = (None, _odd_multiples(q[0], q[1]))

    def verify(self, digest, sig):
        return _safely(lambda: _verify(self._table, digest, sig))

    def verify_message(self, message, sig):
        return _safely(lambda: _verify(self._table, hashlib.sha256(message).digest(), sig))


def check_pubkey(pub):
    return _safely(lambda: _decode(pub) is not None)


def verify(pub, digest, sig):
    return _safely(lambda: PublicKey(pub).verify(digest, sig))


def verify_message(pub, message, sig):
    return _safely(lambda: PublicKey(pub).verify_message(message, sig))
