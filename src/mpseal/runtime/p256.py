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
# Memory: imported from .mpy the module holds ~9 KB of heap (frozen: none); on the assembly
# path a PublicKey holds one 768-byte table and a verify allocates ~4 KB at its peak (Pico,
# measured), nothing per digit; verify runs in a 32 KB heap. Compiling this .py on the
# device needs ~38 KB.

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

# x, y and p - y of G, 3G, 5G, .., 31G (affine), 32 bytes little-endian each, as one bytes
# constant: loading 32 integer constants from the .mpy cost ~4 ms per boot on a Pico, these
# bytes nothing; p256_fast's assembly chain takes its 32-byte pieces as they are (making
# them from integers at each verify cost ~3.7 ms on a Pico), _g_odd() makes the integers
# for the Python-integer path. tests/test_runtime_p256.py recomputes them.
_G_FE = (
    # 1G
    b"\x96\xc2\x98\xd8\x45\x39\xa1\xf4\xa0\x33\xeb\x2d\x81\x7d\x03\x77\xf2\x40\xa4\x63\xe5\xe6\xbc\xf8\x47\x42\x2c\xe1\xf2\xd1\x17\x6b"
    b"\xf5\x51\xbf\x37\x68\x40\xb6\xcb\xce\x5e\x31\x6b\x57\x33\xce\x2b\x16\x9e\x0f\x7c\x4a\xeb\xe7\x8e\x9b\x7f\x1a\xfe\xe2\x42\xe3\x4f"
    b"\x0a\xae\x40\xc8\x97\xbf\x49\x34\x31\xa1\xce\x94\xa9\xcc\x31\xd4\xe9\x61\xf0\x83\xb5\x14\x18\x71\x65\x80\xe5\x01\x1c\xbd\x1c\xb0"
    # 3G
    b"\x6c\xfd\xe7\xc6\x1b\x66\x41\xfb\x85\xa9\xad\xef\x21\xb7\xc6\xe6\x65\xf1\x4b\x1d\x95\xef\xf7\xc8\x44\x0a\x33\xa6\xd1\xe4\xcb\x5e"
    b"\x32\x50\x7d\xa2\x27\xb1\x79\x9a\x3d\xb8\x4f\x38\x36\xb0\x2a\xd8\xec\xa2\x64\x1a\xce\x06\x4b\x37\x7e\xff\x98\x49\x0c\x64\x34\x87"
    b"\xcd\xaf\x82\x5d\xd8\x4e\x86\x65\xc2\x47\xb0\xc7\xca\x4f\xd5\x27\x13\x5d\x9b\xe5\x31\xf9\xb4\xc8\x82\x00\x67\xb6\xf2\x9b\xcb\x78"
    # 5G
    b"\xed\x33\xd0\xc3\x0d\x4a\x55\x21\x24\xe5\x5b\x1f\xfd\x82\x8c\xef\xdf\x8f\x66\x08\x56\xc8\x84\xd7\xd2\x40\x51\x51\x7a\x0b\x59\x51"
    b"\xa4\x6d\xa1\xfd\x44\xbb\xd0\xd1\x88\x08\xd8\xd4\x00\x2f\x01\x0d\x26\x79\x8a\xbf\x36\xbf\xe1\x8a\x7d\x72\x4a\x90\xa8\x7d\xc1\xe0"
    b"\x5b\x92\x5e\x02\xbb\x44\x2f\x2e\x77\xf7\x27\x2b\x00\xd1\xfe\xf2\xd9\x86\x75\x40\xc9\x40\x1e\x75\x83\x8d\xb5\x6f\x56\x82\x3e\x1f"
    # 7G
    b"\xa3\xb2\x87\x31\x70\x28\x06\x30\x5b\xef\x0f\xa8\xb8\xf8\xf9\x7e\x60\xfb\x01\x7c\x66\x30\xbb\x25\x46\x7b\xbf\xa0\x6f\x3b\x53\x8e"
    b"\xb4\x00\xf4\xc1\x86\x1a\x5e\xc5\x21\x1b\x04\xcb\x33\x36\xc7\x53\x00\x90\xf5\xa6\x83\x9f\x06\x6d\x36\x18\x33\xe0\xbd\x1d\xeb\x73"
    b"\x4b\xff\x0b\x3e\x79\xe5\xa1\x3a\xde\xe4\xfb\x34\xcd\xc9\x38\xac\xff\x6f\x0a\x59\x7c\x60\xf9\x92\xca\xe7\xcc\x1f\x41\xe2\x14\x8c"
    # 9G
    b"\xe0\x9e\x94\x90\x4b\x8a\x9e\xd7\xb3\xf8\x6d\x2c\x8c\xcb\x0a\x9e\x72\xf8\x71\x1d\xd5\x38\x89\x87\x71\x0b\xdf\xfe\xb6\xd7\x68\xea"
    b"\xfa\x48\xd0\x4d\x4a\x22\x5a\xe8\x3f\x82\xde\xa4\xea\x4f\x71\x4d\xc8\xa0\x8e\x4a\x96\x4a\x01\x87\xe7\xfc\xc9\x72\xc9\x44\x27\x2a"
    b"\x05\xb7\x2f\xb2\xb5\xdd\xa5\x17\xc0\x7d\x21\x5b\x16\xb0\x8e\xb2\x37\x5f\x71\xb5\x69\xb5\xfe\x78\x19\x03\x36\x8d\x35\xbb\xd8\xd5"
    # 11G
    b"\xd1\x21\xbc\x74\xd3\x91\x33\x43\xbf\x48\x50\x25\xd0\x2e\x74\x16\xda\x1c\xc2\xb0\x9d\x37\x38\x06\x59\x4c\x3b\x88\xb7\x13\xd1\x3e"
    b"\x40\x37\x2a\xe8\xfc\xee\xf8\xe2\xda\x89\x98\x5e\xda\x04\x0d\x09\x8a\xc6\xf4\xa4\xaf\x43\xc8\x24\xa2\xc8\xc4\xcc\x9a\x20\x99\x90"
    b"\xbf\xc8\xd5\x17\x03\x11\x07\x1d\x25\x76\x67\xa1\x26\xfb\xf2\xf6\x75\x39\x0b\x5b\x50\xbc\x37\xdb\x5e\x37\x3b\x33\x64\xdf\x66\x6f"
    # 13G
    b"\x01\x2c\x07\x46\x9d\x5d\xe1\x98\x8a\xd5\xea\x65\x4b\x28\x2e\x79\xfc\xe2\x5e\xd8\xf2\x5d\x80\x61\x5a\x49\xac\xe0\x7a\x83\x7c\x17"
    b"\xd8\xbf\xc7\xef\xe2\xbb\x43\x9c\xf3\x4d\xfb\xa1\xc3\x14\xee\x26\x72\x4e\x0f\xb4\xad\x91\x40\xa2\x58\xa5\xbe\x4e\xcd\x58\xbb\x63"
    b"\x27\x40\x38\x10\x1d\x44\xbc\x63\x0c\xb2\x04\x5e\x3d\xeb\x11\xd9\x8d\xb1\xf0\x4b\x52\x6e\xbf\x5d\xa8\x5a\x41\xb1\x31\xa7\x44\x9c"
    # 15G
    b"\x5f\x9d\x9b\xe5\x63\x8c\x66\x63\xf1\x0e\x3a\xde\x92\xaf\x03\xae\x65\x82\x88\x99\x89\x37\xfb\xad\xe7\xba\x1a\x97\xc6\x4d\x45\xf0"
    b"\x36\x4f\x03\x0d\xde\x9c\xe5\x47\x3f\xfa\xb5\x75\xce\x21\x3b\x2a\xe6\x43\x96\x1f\xe5\x94\x65\x4e\x1f\x2d\x2e\x59\xe3\x3e\xb9\xb5"
    b"\xc9\xb0\xfc\xf2\x21\x63\x1a\xb8\xc0\x05\x4a\x8a\x32\xde\xc4\xd5\x19\xbc\x69\xe0\x1a\x6b\x9a\xb1\xe1\xd2\xd1\xa6\x1b\xc1\x46\x4a"
    # 17G
    b"\x3e\xa7\x38\x47\xe3\xbc\x1a\xba\xf8\x4a\xd6\xf0\x78\x86\xa6\x5f\x1a\x30\x75\x6f\xb6\x84\x09\x9c\x3a\xcc\xf1\xc0\x04\x69\x77\x47"
    b"\xdc\xfc\xf1\x71\xff\x87\xf7\x32\x3f\x73\xd5\x28\x44\x80\xb2\x81\x83\x8e\x64\x77\x65\x85\x31\x62\x28\x57\xb9\xb5\xe6\x5e\x00\xaa"
    b"\x23\x03\x0e\x8e\x00\x78\x08\xcd\xc0\x8c\x2a\xd7\xbc\x7f\x4d\x7e\x7c\x71\x9b\x88\x9a\x7a\xce\x9d\xd8\xa8\x46\x4a\x18\xa1\xff\x55"
    # 19G
    b"\x83\xed\x03\xab\x74\x7b\xfc\xc1\x95\x48\x88\x57\x22\x45\x2c\x78\x07\xc5\x08\x71\xc1\xb7\x39\xce\x25\x0c\x2c\x10\x61\x28\x6d\xcb"
    b"\xaa\xcd\xce\x2b\x75\x50\x91\xe3\x03\x3e\xfa\x30\x6e\x71\x96\xa4\xe4\x6c\x6d\x0d\x10\xe7\x35\x5c\x51\xef\xd9\x24\x4b\x61\xd7\x58"
    b"\x55\x32\x31\xd4\x8a\xaf\x6e\x1c\xfc\xc1\x05\xcf\x92\x8e\x69\x5b\x1b\x93\x92\xf2\xef\x18\xca\xa3\xaf\x10\x26\xdb\xb3\x9e\x28\xa7"
    # 21G
    b"\x83\x9e\x39\x67\x4e\x36\x76\xfd\x23\x15\x2b\xf4\x39\x21\x58\x3a\xa5\xbc\x73\xb4\x6e\xc8\x4a\x2e\x7b\x7c\x63\x86\xf6\xfc\x50\x32"
    b"\x09\x8c\xd4\x71\xa0\x24\xde\x15\x82\x6a\x56\x3b\xc3\xd3\x7c\x89\x8c\xb8\x7e\x1d\x0d\x09\xb3\x97\x93\x35\x7d\x66\x42\xc3\xe7\x42"
    b"\xf6\x73\x2b\x8e\x5f\xdb\x21\xea\x7d\x95\xa9\xc4\x3d\x2c\x83\x76\x73\x47\x81\xe2\xf2\xf6\x4c\x68\x6d\xca\x82\x99\xbc\x3c\x18\xbd"
    # 23G
    b"\x96\x78\xca\x45\x30\x57\x2e\x67\xfe\xa4\x64\xdf\xa5\xc0\x0b\x3c\xa6\x3f\x58\xd4\x39\x3e\x8a\xd2\xd7\x40\x26\x9c\x23\xc7\x91\x0e"
    b"\x55\xad\x40\x31\x54\x46\x80\x13\xae\xa5\xe7\x75\x35\x83\x68\x7e\x6d\xbd\xe0\xb8\x3b\x73\x22\x1a\x22\xba\x0d\x55\x3b\x5c\xf6\x5d"
    b"\xaa\x52\xbf\xce\xab\xb9\x7f\xec\x51\x5a\x18\x8a\xcb\x7c\x97\x81\x92\x42\x1f\x47\xc4\x8c\xdd\xe5\xde\x45\xf2\xaa\xc3\xa3\x09\xa2"
    # 25G
    b"\x87\xd6\x00\xf2\x45\xdc\xa4\x84\x24\x1b\x6f\xb7\xc5\x2f\x65\x41\x84\xfa\x07\x8c\x2d\xf5\xf4\x85\xb6\x0b\x0c\x4b\x55\xe2\x67\x3a"
    b"\x24\x93\xf7\x02\xb3\x16\xed\xa9\x8a\x61\xa7\x35\xf7\x8a\x18\x8c\x0d\xfb\x3a\x16\x67\xf2\xda\x26\x43\xcf\x1f\x2f\x87\xf1\xd0\x27"
    b"\xdb\x6c\x08\xfd\x4c\xe9\x12\x56\x75\x9e\x58\xca\x09\x75\xe7\x73\xf2\x04\xc5\xe9\x98\x0d\x25\xd9\xbd\x30\xe0\xd0\x77\x0e\x2f\xd8"
    # 27G
    b"\xd1\x83\x08\x3b\x17\x01\xe2\xf2\xab\x54\x3e\x68\xbd\x55\x63\x57\x78\xf3\x11\x46\xac\x2f\xba\xde\x51\x0d\xd8\x19\x58\xfa\x4f\x18"
    b"\x6f\x6e\x90\x60\xc2\x42\xd2\x20\x16\x49\xf0\x63\xcc\xec\xbd\x45\x95\x99\xcb\x26\x08\xd9\xc6\xa4\x59\xf3\x88\x66\x27\x6e\xa6\xc0"
    b"\x90\x91\x6f\x9f\x3d\xbd\x2d\xdf\xe9\xb6\x0f\x9c\x34\x13\x42\xba\x6a\x66\x34\xd9\xf7\x26\x39\x5b\xa7\x0c\x77\x99\xd7\x91\x59\x3f"
    # 29G
    b"\xef\x4d\x78\x1c\x3d\x69\xdd\xde\x41\x8a\xb5\x88\xc6\xd1\x8c\xfd\x8c\x3b\x85\x90\xa0\x6d\xc3\xa7\x07\x5b\x19\xfa\xde\x3a\xd3\xd6"
    b"\xa6\xbc\xd1\x93\x45\x12\x0c\x55\xed\xed\x95\x4b\xab\x66\xa1\x09\xcb\x5d\x8a\x55\x5f\x24\x78\x3f\x7e\x5d\x19\xee\x16\xba\xaa\x84"
    b"\x59\x43\x2e\x6c\xba\xed\xf3\xaa\x12\x12\x6a\xb4\x55\x99\x5e\xf6\x34\xa2\x75\xaa\xa0\xdb\x87\xc0\x82\xa2\xe6\x11\xe8\x45\x55\x7b"
    # 31G
    b"\x8b\x5b\xb4\xa1\xa0\x9a\x3f\x3e\x3e\x5b\xa9\x52\x7d\xdb\xc9\xfa\xa0\x9a\xae\xa7\x26\xa0\x5d\xa8\x5d\xe0\xc7\x2d\x50\x9e\x1d\x30"
    b"\x67\xe2\x7e\xa1\xae\xb6\x8d\xd5\x61\xca\x87\x68\xe4\x9a\x8d\x29\x72\x7d\x01\x6b\x02\x3c\xd2\xe0\x23\x12\x06\xb3\xf6\xb6\x51\x65"
    b"\x98\x1d\x81\x5e\x51\x49\x72\x2a\x9e\x35\x78\x97\x1c\x65\x72\xd6\x8d\x82\xfe\x94\xfd\xc3\x2d\x1f\xdd\xed\xf9\x4c\x08\x49\xae\x9a"
)
_G_ODD = None  # [x1, y1, x3, y3, ..] as integers, made by _g_odd() when first needed


def _g_odd():
    global _G_ODD
    if _G_ODD is None:
        b = _G_FE
        t = [0] * (len(b) // 48)  # one allocation: a growing list or a generator fragments
        for i in range(len(t)):  # a small heap (tests/test_guard.py, the 36 KB one)
            j = 96 * (i >> 1) + 32 * (i & 1)  # x, y of point i >> 1 (p - y not needed here)
            t[i] = int.from_bytes(b[j : j + 32], "little")
        _G_ODD = t
    return _G_ODD


try:  # the assembly path (ARM boards: p256_fast imports p256_thumb and tests it)
    import p256_thumb  # first: where it is missing, p256_fast is not loaded for nothing
    import p256_fast as _F
except Exception:  # no inline assembler (SyntaxError), no module, wrong .mpy arch
    _F = None
p256_thumb = None  # p256_fast holds it where it is used; the name here only ordered the imports
FAST = _F is not None
if not FAST:  # the integers now, where the Python-integer path will need them
    _g_odd()
    _G_FE = None


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
    fast = q_table[0] is not None  # the assembly chain (q_table[0] is the key's buffers)
    pa = [] if fast else None  # digit positions: only the assembly chain reads them
    pb = [] if fast else None
    a = _naf(int.from_bytes(digest, "big") * w % N, _WG, pa)  # u1 = e / s
    b = _naf(r * w % N, _WQ, pb)  # u2 = r / s
    n = max(len(a), len(b))
    a.extend(bytes(n - len(a)))
    b.extend(bytes(n - len(b)))
    P = _P
    if fast:
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
            self._table = (_F.key_table(q[0], q[1]), None)
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
