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
# 4 bytes per step: opcode (0 mul, 1 sqr, 2 add, 3 sub), destination, operands.
_DBL = bytes((
    1, 3, 2, 0,  3, 4, 0, 3,  2, 5, 0, 3,  0, 4, 4, 5,  2, 5, 4, 4,  2, 4, 5, 4,  # m = 3(X-t)(X+t)
    2, 5, 1, 1,  0, 2, 5, 2,  # Z = 2 Y Z
    1, 3, 1, 0,  0, 5, 0, 3,  2, 5, 5, 5,  2, 5, 5, 5,  # t = Y^2, s = 4 X t
    1, 0, 4, 0,  3, 0, 0, 5,  3, 0, 0, 5,  # X = m^2 - 2 s
    3, 1, 5, 0,  0, 1, 4, 1,  1, 3, 3, 0,  2, 3, 3, 3,  2, 3, 3, 3,  2, 3, 3, 3,
    3, 1, 1, 3,  # Y = m (s - X) - 8 t^2
))
_ADD1 = bytes((  # h = x Z^2 - X (slot 4), u = y Z^3 - Y (slot 5); flags: h, u = 0 mod p
    1, 3, 2, 0,  0, 4, 9, 3,  3, 4, 4, 0,  0, 5, 10, 3,  0, 5, 5, 2,  3, 5, 5, 1,
    4, 11, 4, 0,  4, 12, 5, 0,  # ws[352]: h = 0, ws[384]: u = 0
))
# 1 / a = a^(p - 2) for a in slot 13, into slot 22 (255 squarings, 13 products): slots
# 14..21 hold a^(2^k - 1) for k = 2, 4, 8, 16, 24, 28, 30, 32; p - 2 in binary is
# 32 ones, 31 zeros, a one, 96 zeros, 94 ones, a zero, a one.
_INV = bytes((
    5, 14, 13, 1,  0, 14, 14, 13,  5, 15, 14, 2,  0, 15, 15, 14,  5, 16, 15, 4,
    0, 16, 16, 15,  5, 17, 16, 8,  0, 17, 17, 16,  5, 18, 17, 8,  0, 18, 18, 16,
    5, 19, 18, 4,  0, 19, 19, 15,  5, 20, 19, 2,  0, 20, 20, 14,  5, 21, 20, 2,
    0, 21, 21, 14,  5, 22, 21, 32,  0, 22, 22, 13,  5, 22, 22, 128,  0, 22, 22, 21,
    5, 22, 22, 32,  0, 22, 22, 21,  5, 22, 22, 30,  0, 22, 22, 20,  5, 22, 22, 2,
    0, 22, 22, 13,
))
_ADD2 = bytes((
    1, 3, 4, 0,  0, 6, 4, 3,  0, 3, 0, 3,  # zz = h^2, t = h zz, v = X zz
    1, 0, 5, 0,  3, 0, 0, 6,  3, 0, 0, 3,  3, 0, 0, 3,  # X = u^2 - t - 2 v
    3, 3, 3, 0,  0, 3, 5, 3,  0, 1, 1, 6,  3, 1, 3, 1,  # Y = u (v - X) - Y t
    0, 2, 2, 4,  # Z = Z h
))
_ONE = b"\x01" + bytes(31)


def _self_test():
    # each operation once against Python integers
    ws = bytearray(416)
    ws[288:352] = bytes(range(1, 65))
    ws[352:384] = _P.to_bytes(32, "little")
    p256_thumb.run(ws, bytes((0, 3, 9, 10,  3, 4, 9, 10,  5, 5, 9, 3,  4, 6, 11, 0,
                              2, 11, 9, 10,  4, 12, 11, 0)), 6, 1)
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
    run(ws, bytes((1, 3, 2, 0,  0, 0, 9, 3,  0, 1, 10, 3,  0, 1, 1, 2)), 4, 1)  # Q on the
    ws[64:96] = _ONE  # isomorphic curve where 2Q is affine: (x lam^2, y lam^3, 1)
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
