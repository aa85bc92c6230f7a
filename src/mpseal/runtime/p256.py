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
_G_BYTES = bytes.fromhex(
    "6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"  # 1G
    "4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5"
    "5ECBE4D1A6330A44C8F7EF951D4BF165E6C6B721EFADA985FB41661BC6E7FD6C"  # 3G
    "8734640C4998FF7E374B06CE1A64A2ECD82AB036384FB83D9A79B127A27D5032"
    "51590B7A515140D2D784C85608668FDFEF8C82FD1F5BE52421554A0DC3D033ED"  # 5G
    "E0C17DA8904A727D8AE1BF36BF8A79260D012F00D4D80888D1D0BB44FDA16DA4"
    "8E533B6FA0BF7B4625BB30667C01FB607EF9F8B8A80FEF5B300628703187B2A3"  # 7G
    "73EB1DBDE03318366D069F83A6F5900053C73633CB041B21C55E1A86C1F400B4"
    "EA68D7B6FEDF0B71878938D51D71F8729E0ACB8C2C6DF8B3D79E8A4B90949EE0"  # 9G
    "2A2744C972C9FCE787014A964A8EA0C84D714FEAA4DE823FE85A224A4DD048FA"
    "3ED113B7883B4C590638379DB0C21CDA16742ED0255048BF433391D374BC21D1"  # 11G
    "9099209ACCC4C8A224C843AFA4F4C68A090D04DA5E9889DAE2F8EEFCE82A3740"
    "177C837AE0AC495A61805DF2D85EE2FC792E284B65EAD58A98E15D9D46072C01"  # 13G
    "63BB58CD4EBEA558A24091ADB40F4E7226EE14C3A1FB4DF39C43BBE2EFC7BFD8"
    "F0454DC6971ABAE7ADFB378999888265AE03AF92DE3A0EF163668C63E59B9D5F"  # 15G
    "B5B93EE3592E2D1F4E6594E51F9643E62A3B21CE75B5FA3F47E59CDE0D034F36"
    "47776904C0F1CC3A9C0984B66F75301A5FA68678F0D64AF8BA1ABCE34738A73E"  # 17G
    "AA005EE6B5B957286231856577648E8381B2804428D5733F32F787FF71F1FCDC"
    "CB6D2861102C0C25CE39B7C17108C507782C452257884895C1FC7B74AB03ED83"  # 19G
    "58D7614B24D9EF515C35E7100D6D6CE4A496716E30FA3E03E39150752BCECDAA"
    "3250FCF686637C7B2E4AC86EB473BCA53A582139F42B1523FD76364E67399E83"  # 21G
    "42E7C342667D359397B3090D1D7EB88C897CD3C33B566A8215DE24A071D48C09"
    "0E91C7239C2640D7D28A3E39D4583FA63C0BC0A5DF64A4FE672E573045CA7896"  # 23G
    "5DF65C3B550DBA221A22733BB8E0BD6D7E68833575E7A5AE138046543140AD55"
    "3A67E2554B0C0BB685F4F52D8C07FA8441652FC5B76F1B2484A4DC45F200D687"  # 25G
    "27D0F1872F1FCF4326DAF267163AFB0D8C188AF735A7618AA9ED16B302F79324"
    "184FFA5819D80D51DEBA2FAC4611F378576355BD683E54ABF2E201173B0883D1"  # 27G
    "C0A66E276688F359A4C6D90826CB999545BDECCC63F0491620D242C260906E6F"
    "D6D33ADEFA195B07A7C36DA090853B8CFD8CD1C688B58A41DEDD693D1C784DEF"  # 29G
    "84AABA16EE195D7E3F78245F558A5DCB09A166AB4B95EDED550C124593D1BCA6"
    "301D9E502DC7E05DA85DA026A7AE9AA0FAC9DB7D52A95B3E3E3F9AA0A1B45B8B"  # 31G
    "6551B6F6B3061223E0D23C026B017D72298D9AE46887CA61D58DB6AEA17EE267"
)
_G_ODD = None  # (x1, y1, x3, y3, ..) as integers, made by _g_odd() when first needed


def _g_odd():
    global _G_ODD
    if _G_ODD is None:
        b = _G_BYTES
        _G_ODD = tuple(int.from_bytes(b[i : i + 32], "big") for i in range(0, len(b), 32))
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
