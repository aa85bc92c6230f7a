# The assembly path of p256: the verifier's chain and a key's table of odd multiples on
# p256_thumb.run (Thumb-1 field arithmetic). Imported by p256 only; importing it fails
# (and p256 uses Python integers) where p256_thumb cannot load or fails the self-test.
#
#   chain(q_fe, a, b, n, pa, pb) -> (X, Y, Z)   as p256._chain, integers mod p (Z = 0:
#                                        infinity); pa, pb: positions of nonzero digits
#   key_table(x, y) -> 768 bytes         x, y, p - y of Q, 3Q, .., 15Q (as p256._G_FE)
#   inv(a) -> 1 / a mod p                 for an integer 0 < a < p (Fermat, on _INV)

import p256
import p256_thumb

_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF

# Programs for p256_thumb.run on the slots of a workspace: 0 X, 1 Y, 2 Z (Jacobian),
# 3-6 temporaries, 7-8 the products' scratch, 9 x, 10 y (the affine point to add).
# 4 bytes per step: opcode (0 mul, 1 sqr, 2 add, 3 sub), destination, operands. Bytes
# literals: from a ROMFS image they stay in flash (a tuple of integers to make them from
# held ~1.3 KB of the board's heap while the signature is checked).
_DBL = (
    # m = 3(X-t)(X+t)
    b"\x01\x03\x02\x00" b"\x03\x04\x00\x03" b"\x02\x05\x00\x03" b"\x00\x04\x04\x05"
    b"\x02\x05\x04\x04" b"\x02\x04\x05\x04"
    b"\x02\x05\x01\x01" b"\x00\x02\x05\x02"  # Z = 2 Y Z
    # t = Y^2, s = 4 X t
    b"\x01\x03\x01\x00" b"\x00\x05\x00\x03" b"\x02\x05\x05\x05" b"\x02\x05\x05\x05"
    b"\x01\x00\x04\x00" b"\x03\x00\x00\x05" b"\x03\x00\x00\x05"  # X = m^2 - 2 s
    # Y = m (s - X) - 8 t^2
    b"\x03\x01\x05\x00" b"\x00\x01\x04\x01" b"\x01\x03\x03\x00" b"\x02\x03\x03\x03"
    b"\x02\x03\x03\x03" b"\x02\x03\x03\x03" b"\x03\x01\x01\x03"
)
_ADD1 = (  # h = x Z^2 - X (slot 4), u = y Z^3 - Y (slot 5); flags: h, u = 0 mod p
    b"\x01\x03\x02\x00" b"\x00\x04\x09\x03" b"\x03\x04\x04\x00" b"\x00\x05\x0a\x03"
    b"\x00\x05\x05\x02" b"\x03\x05\x05\x01"
    b"\x04\x0b\x04\x00" b"\x04\x0c\x05\x00"  # ws[352]: h = 0, ws[384]: u = 0
)
# 1 / a = a^(p - 2) for a in slot 13, into slot 22 (255 squarings, 13 products): slots
# 14..21 hold a^(2^k - 1) for k = 2, 4, 8, 16, 24, 28, 30, 32; p - 2 in binary is
# 32 ones, 31 zeros, a one, 96 zeros, 94 ones, a zero, a one.
_INV = (
    b"\x05\x0e\x0d\x01" b"\x00\x0e\x0e\x0d" b"\x05\x0f\x0e\x02" b"\x00\x0f\x0f\x0e"
    b"\x05\x10\x0f\x04" b"\x00\x10\x10\x0f" b"\x05\x11\x10\x08" b"\x00\x11\x11\x10"
    b"\x05\x12\x11\x08" b"\x00\x12\x12\x10" b"\x05\x13\x12\x04" b"\x00\x13\x13\x0f"
    b"\x05\x14\x13\x02" b"\x00\x14\x14\x0e" b"\x05\x15\x14\x02" b"\x00\x15\x15\x0e"
    b"\x05\x16\x15\x20" b"\x00\x16\x16\x0d" b"\x05\x16\x16\x80" b"\x00\x16\x16\x15"
    b"\x05\x16\x16\x20" b"\x00\x16\x16\x15" b"\x05\x16\x16\x1e" b"\x00\x16\x16\x14"
    b"\x05\x16\x16\x02" b"\x00\x16\x16\x0d"
)
_ADD2 = (
    b"\x01\x03\x04\x00" b"\x00\x06\x04\x03" b"\x00\x03\x00\x03"  # zz = h^2, t = h zz, v = X zz
    # X = u^2 - t - 2 v
    b"\x01\x00\x05\x00" b"\x03\x00\x00\x06" b"\x03\x00\x00\x03" b"\x03\x00\x00\x03"
    # Y = u (v - X) - Y t
    b"\x03\x03\x03\x00" b"\x00\x03\x05\x03" b"\x00\x01\x01\x06" b"\x03\x01\x03\x01"
    b"\x00\x02\x02\x04"  # Z = Z h
)
_ONE = b"\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0" b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"


def _self_test():
    # each operation once against Python integers
    ws = bytearray(416)
    ws[288:352] = bytes(range(1, 65))
    ws[352:384] = _P.to_bytes(32, "little")
    p256_thumb.run(ws, b"\x00\x03\x09\x0a" b"\x03\x04\x09\x0a" b"\x05\x05\x09\x03"
                   b"\x04\x06\x0b\x00" b"\x02\x0b\x09\x0a" b"\x04\x0c\x0b\x00", 6, 1)
    x = int.from_bytes(ws[288:320], "little")
    y = int.from_bytes(ws[320:352], "little")
    return (int.from_bytes(ws[96:128], "little") % _P == x * y % _P
            and int.from_bytes(ws[128:160], "little") % _P == (x - y) % _P
            and int.from_bytes(ws[160:192], "little") % _P == pow(x, 8, _P)
            and int.from_bytes(ws[352:384], "little") % _P == (x + y) % _P
            and ws[192] == 1 and ws[384] == 0)


if not _self_test():
    raise ImportError("p256_thumb failed its self-test")


def _fe(x):
    return x.to_bytes(32, "little")


def _fmul(ws, a, b):
    # a * b mod p (32-byte strings in, out), through the workspace ws
    ws[288:320] = a
    ws[320:352] = b
    p256_thumb.run(ws, b"\x00\x03\x09\x0a", 1, 1)
    return bytes(ws[96:128])


def key_table(x, y):
    # x, y and p - y of Q, 3Q, .., 15Q (affine), 32 bytes little-endian each, in one
    # 768-byte buffer: the layout of p256._G_FE, which chain() reads. One buffer, not a
    # list of integers or strings: the boot's peak heap is the signature check's.
    P = _P
    run = p256_thumb.run
    ws = bytearray(736)  # slots 0-10 as the chain's, 13-22 for _INV
    ws[0:32] = _fe(x)
    ws[32:64] = _fe(y)
    ws[64:96] = _ONE
    run(ws, _DBL, 22, 1)  # 2Q = (X2, Y2, lam)
    x2 = bytes(ws[0:32])
    y2 = bytes(ws[32:64])
    lam = bytes(ws[64:96])
    ws[288:320] = _fe(x)
    ws[320:352] = _fe(y)
    # Q on the isomorphic curve where 2Q is affine: (x lam^2, y lam^3, 1)
    run(ws, b"\x01\x03\x02\x00" b"\x00\x00\x09\x03" b"\x00\x01\x0a\x03" b"\x00\x01\x01\x02", 4, 1)
    ws[64:96] = _ONE
    ws[288:320] = x2
    ws[320:352] = y2
    pts = bytearray(768)  # (X, Y, Z) of Q, 3Q, .., 15Q (p256._WQ = 5)
    pts[0:96] = ws[0:96]
    for k in range(96, 768, 96):
        run(ws, _ADD1, 6, 1)  # without the zero tests: kQ = +-2Q for odd k < 16 cannot be
        run(ws, _ADD2, 12, 1)
        pts[k : k + 96] = ws[0:96]
    # One inversion for all Z (Montgomery's trick); (X, Y, Z) here is (X, Y, Z lam) there.
    acc = _ONE
    prefix = bytearray(256)
    for k in range(0, 256, 32):
        prefix[k : k + 32] = acc
        acc = _fmul(ws, acc, pts[3 * k + 64 : 3 * k + 96])
    ws[416:448] = _fmul(ws, acc, lam)
    run(ws, _INV, 26, 1)
    inv = bytes(ws[704:736])  # 1 / (lam Z0 Z1 ..)
    for k in range(672, -1, -96):  # each point is read whole before its row is written
        zi = _fmul(ws, inv, prefix[k // 3 : k // 3 + 32])  # 1 / (Z lam)
        inv = _fmul(ws, inv, pts[k + 64 : k + 96])
        t = _fmul(ws, zi, zi)
        y = int.from_bytes(_fmul(ws, _fmul(ws, pts[k + 32 : k + 64], t), zi), "little") % P
        pts[k : k + 32] = _fe(int.from_bytes(_fmul(ws, pts[k : k + 32], t), "little") % P)
        pts[k + 32 : k + 64] = _fe(y)
        pts[k + 64 : k + 96] = _fe(P - y)
    return pts


def inv(a):
    ws = bytearray(736)
    ws[416:448] = _fe(a)
    p256_thumb.run(ws, _INV, 26, 1)
    return int.from_bytes(ws[704:736], "little") % _P


def chain(q_fe, a, b, n, pa, pb):
    # (X, Y, Z) as integers mod p of the sum over the digits, as p256._chain, on
    # p256_thumb; q_fe: key_table()'s buffer; pa, pb: the ascending positions of a's and
    # b's nonzero digits (p256._naf). The doublings between two of them run in one call.
    # Nothing is allocated per digit but the slices copied into the workspace.
    run = p256_thumb.run
    P = _P
    ws = bytearray(416)  # slots 11, 12: _ADD1's zero flags
    digits = (a, b)
    tables = (memoryview(p256._G_FE), q_fe and memoryview(q_fe))
    inf = True
    prev = 0
    ia = len(pa) - 1
    ib = len(pb) - 1
    while ia >= 0 or ib >= 0:  # the positions of both, merged, from the top
        i = pa[ia] if ia >= 0 else -1
        if ib >= 0 and pb[ib] >= i:
            i = pb[ib]
            ib -= 1
        if ia >= 0 and pa[ia] == i:
            ia -= 1
        if not inf:
            run(ws, _DBL, 22, prev - i)
        prev = i
        for k in range(2):
            d = digits[k][i]
            if not d:
                continue
            tab = tables[k]
            if d < 128:
                j = (d >> 1) * 96
                y = j + 32
            else:  # negative digit: add -(|d| Point)
                j = ((256 - d) >> 1) * 96
                y = j + 64
            if inf:
                ws[0:32] = tab[j : j + 32]
                ws[32:64] = tab[y : y + 32]
                ws[64:96] = _ONE
                inf = False
                continue
            ws[288:320] = tab[j : j + 32]
            ws[320:352] = tab[y : y + 32]
            run(ws, _ADD1, 8, 1)
            if ws[352]:  # h = 0: same x
                if not ws[384]:
                    inf = True  # adding -R to R
                else:  # adding R to R
                    X, Y, Z = p256._double(int.from_bytes(ws[0:32], "little"),
                                           int.from_bytes(ws[32:64], "little"),
                                           int.from_bytes(ws[64:96], "little"))
                    ws[0:32] = _fe(X % P)
                    ws[32:64] = _fe(Y % P)
                    ws[64:96] = _fe(Z % P)
                continue
            run(ws, _ADD2, 12, 1)
    if inf:
        return 0, 1, 0
    if prev:
        run(ws, _DBL, 22, prev)
    return (int.from_bytes(ws[0:32], "little") % P, int.from_bytes(ws[32:64], "little") % P,
            int.from_bytes(ws[64:96], "little") % P)
