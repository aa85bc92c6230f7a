"""The device's ECDSA P-256 verifier (``runtime/p256.py``), run in the real MicroPython VM.

Every verdict of the VM is compared with what ``cryptography`` (OpenSSL) says about the
same bytes, under mpseal's encoding contract: a 65-byte uncompressed key, a 64-byte
``r || s`` signature, a 32-byte SHA-256 digest. Vectors are made fresh on each run: random
keys and messages, tampered copies, malformed encodings, and constructed edge cases of the
verification equation (Wycheproof style) that random signatures never reach.

All vectors of the main set go through one VM process; a second run checks a 32 KB heap.
Every test of the main set runs three times: in the unix-port VM (p256 on Python
integers, the path of ports without the inline assembler), on stock MicroPython for the
MPS2-AN385 Cortex-M3 in QEMU and on the stock RPI_PICO image in the virtual Pico
(RP2040, Cortex-M0+: Thumb-1 only), both with the guard's modules exactly as compiled for
the RP2040 (armv6m .mpy, so p256 runs its chain on p256_thumb's assembly).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from pico_exec import pico_with
from qemu_mps2 import Mps2

from mpseal.device.guard_install import compiled_guard, guard_rom_image
from mpseal.device.vm import find_micropython, runtime_dir

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)
SOURCE = runtime_dir() / "p256.py"
VM_TIMEOUT = 300

# Runs in the VM: argv = runtime folder, vectors file. Prints one verdict character per
# vector ("1" True, "0" False, "?" anything else returned) after "VERDICTS:".
DRIVER = """
import sys, json
sys.path.insert(0, sys.argv[1])
import p256
from binascii import unhexlify
with open(sys.argv[2]) as f:
    vectors = json.load(f)
out = []
for kind, pub, data, sig in vectors:
    fn = p256.verify if kind == "digest" else p256.verify_message
    res = fn(unhexlify(pub), unhexlify(data), unhexlify(sig))
    out.append("1" if res is True else "0" if res is False else "?")
print("VERDICTS:" + "".join(out))
"""


# --- reference arithmetic (plain Python, affine; None is the point at infinity) ----------


def ec_add(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % P == 0:
            return None
        lam = (3 * x1 * x1 - 3) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def ec_mul(k, pt):
    acc = None
    while k:
        if k & 1:
            acc = ec_add(acc, pt)
        pt = ec_add(pt, pt)
        k >>= 1
    return acc


def ec_neg(pt):
    return pt[0], (P - pt[1]) % P


def lift_x(x):
    """A curve point with this x (taken mod p), or None."""
    rhs = (x * x * x - 3 * x + B) % P
    y = pow(rhs, (P + 1) // 4, P)
    return (x % P, y) if y * y % P == rhs else None


def point_with_small_y(start: int):
    """A curve point with y >= ``start`` as small as can be found (y + p still fits 32 bytes).

    Solves x^3 - 3x + b - y^2 = 0 for x: the root is the gcd of that cubic and x^p - x
    when the gcd has degree 1 (polynomials mod p, lowest coefficient first).
    """

    def trim(a):
        a = list(a)
        while a and a[-1] == 0:
            a.pop()
        return a

    def pmod(a, b):
        a, b = trim(a), trim(b)
        inv = pow(b[-1], -1, P)
        while len(a) >= len(b):
            q, shift = a[-1] * inv % P, len(a) - len(b)
            for i, bi in enumerate(b):
                a[shift + i] = (a[shift + i] - q * bi) % P
            a = trim(a)
        return a

    for y in range(start, start + 1000):
        f = [(B - y * y) % P, P - 3, 0, 1]
        h, base, e = [1], [0, 1], P  # h = x^p mod f, square-and-multiply
        while e:
            if e & 1:
                h = pmod(poly_mul(h, base), f)
            base = pmod(poly_mul(base, base), f)
            e >>= 1
        h = h + [0] * (2 - len(h))
        g, r = f, pmod([h[0], (h[1] - 1) % P] + h[2:], f)  # gcd(f, x^p - x)
        while r:
            g, r = r, pmod(g, r)
        if len(g) == 2:
            x = -g[0] * pow(g[1], -1, P) % P
            assert (x * x * x - 3 * x + B - y * y) % P == 0
            return x, y
    raise AssertionError("no point found")


def poly_mul(a, b):
    out = [0] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            out[i + j] = (out[i + j] + ai * bj) % P
    return out


def encode_point(pt) -> bytes:
    return b"\x04" + pt[0].to_bytes(32, "big") + pt[1].to_bytes(32, "big")


def encode_sig(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# --- vectors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Vector:
    case: str
    kind: str  # "digest": verify(pub, digest, sig); "message": verify_message(pub, msg, sig)
    pub: bytes
    data: bytes
    sig: bytes

    def digest(self) -> bytes:
        return self.data if self.kind == "digest" else hashlib.sha256(self.data).digest()


def reference(v: Vector) -> bool:
    """What OpenSSL (through ``cryptography``) says, within mpseal's encodings."""
    digest = v.digest()
    if len(v.pub) != 65 or len(v.sig) != 64 or len(digest) != 32:
        return False  # compressed keys or DER signatures are not mpseal's encodings
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), v.pub)
    except ValueError:
        return False
    r, s = int.from_bytes(v.sig[:32], "big"), int.from_bytes(v.sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


@dataclass
class Signed:
    pub: bytes
    msg: bytes
    r: int
    s: int

    def vector(
        self,
        case: str,
        kind: str = "digest",
        *,
        pub: bytes | None = None,
        msg: bytes | None = None,
        r: int | None = None,
        s: int | None = None,
        sig: bytes | None = None,
    ) -> Vector:
        msg = self.msg if msg is None else msg
        data = hashlib.sha256(msg).digest() if kind == "digest" else msg
        if sig is None:
            sig = encode_sig(self.r if r is None else r, self.s if s is None else s)
        return Vector(case, kind, self.pub if pub is None else pub, data, sig)


def sign(rng: random.Random, msg: bytes) -> Signed:
    key = ec.derive_private_key(rng.randrange(1, N), ec.SECP256R1())
    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return Signed(pub, msg, r, s)


def signature_for(q, u1: int, u2: int):
    """(digest, r, s) that verify under key ``q`` with exactly these u1 = e/s, u2 = r/s.

    No private key is needed: R = u1*G + u2*Q gives r, then s = r/u2 and e = u1*s.
    """
    x = ec_add(ec_mul(u1, G), ec_mul(u2, q))[0]
    r = x % N
    s = r * pow(u2, -1, N) % N
    return (u1 * s % N).to_bytes(32, "big"), r, s


def p256_module():
    """runtime/p256.py imported by CPython (it must import there too), for its tables."""
    spec = importlib.util.spec_from_file_location("p256_on_host", SOURCE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def branches_hit(u1: int, u2: int) -> set[str]:
    """Exceptional cases the device's addition meets for u1*G + u2*G (public key G).

    Follows the device's own digit recoding and order of additions, tracking each point
    as its multiple of G, so the constructed vectors provably reach those branches.
    """
    mod = p256_module()
    a, b = mod._naf(u1, mod._WG), mod._naf(u2, mod._WQ)
    signed = lambda d: d - 256 if d > 127 else d  # noqa: E731
    hit: set[str] = set()
    acc = 0  # multiple of G; 0 is the point at infinity
    for i in range(max(len(a), len(b)) - 1, -1, -1):
        acc = 2 * acc % N
        for digits in (a, b):
            d = signed(digits[i]) if i < len(digits) else 0
            if d and acc:
                if acc == d % N:
                    hit.add("double")
                elif (acc + d) % N == 0:
                    hit.add("infinity")
            acc = (acc + d) % N
    return hit


def edge_cases(rng: random.Random) -> list[Vector]:
    out: list[Vector] = []
    gpub = encode_point(G)

    # u1 = 0: the digest is 0 or n, so only u2*Q remains.
    for e in (0, N):
        q = ec_mul(rng.randrange(1, N), G)
        u2 = rng.randrange(1, N)
        _, r, s = signature_for(q, N, u2)  # u1 = n is u1 = 0
        out.append(
            Vector("u1_zero", "digest", encode_point(q), e.to_bytes(32, "big"), encode_sig(r, s))
        )

    # u1*G + u2*Q is the point at infinity: e = -r*d, for any s.
    d = rng.randrange(1, N)
    r = rng.randrange(1, N)
    out.append(
        Vector(
            "sum_is_infinity",
            "digest",
            encode_point(ec_mul(d, G)),
            (-r * d % N).to_bytes(32, "big"),
            encode_sig(r, rng.randrange(1, N)),
        )
    )

    # x(R) >= n, so r = x(R) - n: valid, and the unreduced x(R) as r is out of range.
    # R = u1*G + u2*Q is a point with such an x, and Q = (R - u1*G) / u2.
    x = N
    while (point := lift_x(x)) is None:
        x += 1
    u1, u2 = rng.randrange(1, N), rng.randrange(1, N)
    q = ec_mul(pow(u2, -1, N), ec_add(point, ec_neg(ec_mul(u1, G))))
    digest, r, s = signature_for(q, u1, u2)
    assert r == x - N
    out.append(Vector("x_above_n_reduced", "digest", encode_point(q), digest, encode_sig(r, s)))
    out.append(Vector("x_above_n_unreduced", "digest", encode_point(q), digest, encode_sig(x, s)))

    # Public key = G, and additions that meet their exceptional cases.
    digest, r, s = signature_for(G, 1, 1)  # G + G: the addition must double
    assert "double" in branches_hit(1, 1)
    out.append(Vector("add_meets_double", "digest", gpub, digest, encode_sig(r, s)))
    # u1 = n - 32, u2 = 19 (NAF 1, 0000, -13): the accumulator is -a0*G when a0*G is
    # added, giving infinity, then -13*G is added to it. The result is -13G: valid.
    digest, r, s = signature_for(G, N - 32, 19)
    assert "infinity" in branches_hit(N - 32, 19)
    out.append(Vector("add_meets_infinity", "digest", gpub, digest, encode_sig(r, s)))
    r = rng.randrange(1, N)  # u1 = n - 17, u2 = 17: the sum is infinity, at the last add
    s = r * pow(17, -1, N) % N
    out.append(
        Vector(
            "add_ends_at_infinity",
            "digest",
            gpub,
            ((N - 17) * s % N).to_bytes(32, "big"),
            encode_sig(r, s),
        )
    )
    for _ in range(3):
        u = rng.randrange(1, N)
        digest, r, s = signature_for(G, u, u)  # equal tables for G and Q
        out.append(Vector("key_is_g", "digest", gpub, digest, encode_sig(r, s)))

    # A key with x < 2^256 - p, valid, then with x + p (>= p, same value mod p).
    x = 1
    while (point := lift_x(x)) is None:
        x += 1
    digest, r, s = signature_for(point, rng.randrange(1, N), rng.randrange(1, N))
    out.append(Vector("small_x_key", "digest", encode_point(point), digest, encode_sig(r, s)))
    bad = b"\x04" + (x + P).to_bytes(32, "big") + point[1].to_bytes(32, "big")
    out.append(Vector("key_x_not_reduced", "digest", bad, digest, encode_sig(r, s)))
    # The same with y: a point with a small y, valid, then with y + p.
    point = point_with_small_y(rng.randrange(1, 1 << 64))
    digest, r, s = signature_for(point, rng.randrange(1, N), rng.randrange(1, N))
    out.append(Vector("small_y_key", "digest", encode_point(point), digest, encode_sig(r, s)))
    bad = encode_point(point)[:33] + (point[1] + P).to_bytes(32, "big")
    out.append(Vector("key_y_not_reduced", "digest", bad, digest, encode_sig(r, s)))
    return out


def make_vectors(seed: int) -> list[Vector]:
    rng = random.Random(seed)
    vectors: list[Vector] = []
    signed = [sign(rng, rng.randbytes(rng.randrange(0, 300))) for _ in range(40)]
    signed.append(sign(rng, b""))
    signed.append(sign(rng, rng.randbytes(5000)))
    for i, sg in enumerate(signed):
        vectors.append(sg.vector("valid", "digest" if i % 2 else "message"))

    other = sign(rng, b"another key")
    for i, sg in enumerate(signed[:6]):
        kind = "digest" if i % 2 else "message"
        v = lambda case, sg=sg, kind=kind, **kw: vectors.append(sg.vector(case, kind, **kw))  # noqa: E731
        flipped = bytearray(sg.msg or b"\x00")
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        v("modified_message", msg=bytes(flipped))
        v("modified_message", msg=sg.msg + b"\x00")
        v("modified_r", r=sg.r ^ (1 << rng.randrange(256)))
        v("modified_r", r=(sg.r + 1) % N or 1)
        v("modified_s", s=sg.s ^ (1 << rng.randrange(256)))
        v("modified_s", s=(sg.s + 1) % N or 1)
        v("high_s", s=N - sg.s)
        v("swapped_r_s", r=sg.s, s=sg.r)
        v("r_zero", r=0)
        v("s_zero", s=0)
        v("r_is_n", r=N)
        v("s_is_n", s=N)
        v("r_above_n", r=N + sg.r if N + sg.r < 2**256 else N + 1)
        v("s_n_plus_small", s=N + 1 + i)
        v("r_s_max", r=2**256 - 1, s=2**256 - 1)
        v("r_s_one", r=1, s=1)
        v("wrong_key", pub=other.pub)
        off_curve = bytearray(sg.pub)
        off_curve[64] ^= 1
        v("key_not_on_curve", pub=bytes(off_curve))
        v("key_x_flipped", pub=sg.pub[:1] + bytes([sg.pub[1] ^ 0x80]) + sg.pub[2:])
        for prefix in (0x00, 0x02, 0x03, 0x05, 0x06, 0x07):
            v(f"key_prefix_{prefix:02x}", pub=bytes([prefix]) + sg.pub[1:])
        compressed = bytes([2 + (sg.pub[64] & 1)]) + sg.pub[1:33]
        v("key_compressed", pub=compressed)
        v("key_truncated", pub=sg.pub[:64])
        v("key_extended", pub=sg.pub + b"\x00")
        v("key_all_zero", pub=bytes(65))
        v("key_infinity_byte", pub=b"\x00")
        v("key_empty", pub=b"")
        v("key_y_is_p", pub=sg.pub[:33] + P.to_bytes(32, "big"))
        v("key_xy_max", pub=b"\x04" + b"\xff" * 64)
        full = encode_sig(sg.r, sg.s)
        v("sig_truncated", sig=full[:63])
        v("sig_extended", sig=full + b"\x00")
        v("sig_empty", sig=b"")
        v("sig_der", sig=encode_dss_signature(sg.r, sg.s))
    for sg in signed[:3]:  # digests of the wrong size and special values
        good = sg.vector("valid", "digest")
        vectors.append(Vector("digest_truncated", "digest", sg.pub, good.data[:31], good.sig))
        vectors.append(Vector("digest_extended", "digest", sg.pub, good.data + b"\x00", good.sig))
        vectors.append(Vector("digest_empty", "digest", sg.pub, b"", good.sig))
        vectors.append(
            Vector("digest_zero_prefixed", "digest", sg.pub, b"\x00" + good.data, good.sig)
        )  # same integer, wrong length
    key = ec.derive_private_key(rng.randrange(1, N), ec.SECP256R1())
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    for digest in (b"\xff" * 32, N.to_bytes(32, "big"), (N + 1).to_bytes(32, "big"), bytes(32)):
        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        vectors.append(Vector("digest_special", "digest", pub, digest, encode_sig(r, s)))
    vectors.extend(edge_cases(rng))
    return vectors


def run_vm(
    vectors: list[Vector], folder: Path, module_dir: Path, heapsize: str | None = None
) -> str:
    driver = folder / "driver.py"
    driver.write_text(DRIVER)
    vec_file = folder / "vectors.json"
    vec_file.write_text(
        json.dumps([[v.kind, v.pub.hex(), v.data.hex(), v.sig.hex()] for v in vectors])
    )
    cmd = [str(find_micropython())]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    proc = subprocess.run(
        cmd + [str(driver), str(module_dir), str(vec_file)],
        capture_output=True,
        text=True,
        timeout=VM_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VERDICTS:")]
    assert len(lines) == 1, proc.stdout
    verdicts = lines[0][len("VERDICTS:") :]
    assert len(verdicts) == len(vectors), proc.stdout
    return verdicts


@dataclass
class Outcome:
    vectors: list[Vector]
    device: str
    expected: str


def rp2_modules() -> dict[str, bytes]:
    """p256 and p256_thumb as the guard ships them to an RP2040 (armv6m .mpy)."""
    files = compiled_guard("rp2")
    return {name: files[f"/lib/{name}"] for name in ("p256.mpy", "p256_fast.mpy", "p256_thumb.mpy")}


def run_mps2(vectors: list[Vector]) -> str:
    """Verdicts of the Cortex-M3 in QEMU; fails unless p256 took the assembly path."""
    with Mps2() as board:
        board.put(rp2_modules())
        assert board.exec("import p256\nprint(p256.FAST)\n_ramfs.f.clear()").strip() == "True"
        return run_batches(vectors, board.exec)


def run_mps2_rom(vectors: list[Vector]) -> str:
    """Verdicts of the Cortex-M3 with the verifier from the guard's ROMFS image (a VfsRom over
    its bytes in RAM): p256_thumb there is runtime/p256_thumb_rom.py, which runs the machine
    code where it lies in the image (on a Pico: in flash). Fails unless that path was taken."""
    with Mps2() as board:
        board.put({"g.rom": guard_rom_image("rp2")})
        got = board.exec(
            "import vfs, sys\n"
            "vfs.mount(vfs.VfsRom(open('/ram/g.rom', 'rb').read()), '/rom')\n"
            "sys.path.insert(0, '/rom/lib')\n"
            "import p256, p256_thumb\n"
            "print(p256.FAST, p256_thumb.__file__, hasattr(p256_thumb, '_code'))\n"
            "_ramfs.f.clear()"
        )
        assert got.strip() == "True /rom/lib/p256_thumb.mpy True", got
        return run_batches(vectors, board.exec)


def run_pico(vectors: list[Vector]) -> str:
    """Verdicts of the RP2040 (virtual Pico); fails unless p256 took the assembly path."""
    with pico_with(rp2_modules()) as link:
        assert link.exec("import p256\nprint(p256.FAST)", timeout=60).strip() == "True"
        return run_batches(vectors, lambda code, timeout: link.exec(code, timeout=timeout))


def pico_subset(vectors: list[Vector]) -> list[Vector]:
    """Up to 2 vectors of each case and 10 valid ones: the emulated RP2040 runs ~48 M
    cycles per wall second and a verify with its key table takes ~14 M."""
    seen: dict[str, int] = {}
    out = []
    for v in vectors:
        seen[v.case] = seen.get(v.case, 0) + 1
        if seen[v.case] <= (10 if v.case == "valid" else 2):
            out.append(v)
    return out


def run_batches(vectors: list[Vector], execute: Callable[[str, float], str]) -> str:
    """Verdicts through ``execute(code, timeout)`` on a board, a few vectors per exec."""
    out = []
    batches: list[list[Vector]] = [[]]
    for v in vectors:  # a few KB of source per exec: the MPS2 has a 139 KB heap
        if sum(len(w.data) for w in batches[-1]) + len(v.data) > 1000:
            batches.append([])
        batches[-1].append(v)
    for batch in batches:
        rows = [(v.kind, v.pub.hex(), v.data.hex(), v.sig.hex()) for v in batch]
        got = execute(
            f"from binascii import unhexlify as h\nV = {rows!r}\nout = []\n"
            "for kind, pub, data, sig in V:\n"
            "    fn = p256.verify if kind == 'digest' else p256.verify_message\n"
            "    res = fn(h(pub), h(data), h(sig))\n"
            "    out.append('1' if res is True else '0' if res is False else '?')\n"
            "print('VERDICTS:' + ''.join(out))\n"
            "del V, out\nimport gc\ngc.collect()\n",
            VM_TIMEOUT,
        )
        line = [ln for ln in got.splitlines() if ln.startswith("VERDICTS:")]
        assert len(line) == 1, got
        out.append(line[0][len("VERDICTS:") :])
    verdicts = "".join(out)
    assert len(verdicts) == len(vectors)
    return verdicts


@pytest.fixture(
    scope="module",
    params=[
        "unix-vm-python-ints",
        "cortex-m-thumb-asm",
        "cortex-m-thumb-in-rom",
        "rp2040-thumb-asm",
    ],
)
def outcome(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    seed = int(os.environ.get("MPSEAL_P256_SEED", random.SystemRandom().randrange(2**32)))
    print(f"p256 vectors seed: {seed} (set MPSEAL_P256_SEED to replay)")
    vectors = make_vectors(seed)
    if request.param == "cortex-m-thumb-asm":
        device = run_mps2(vectors)
    elif request.param == "cortex-m-thumb-in-rom":
        device = run_mps2_rom(vectors)
    elif request.param == "rp2040-thumb-asm":
        vectors = pico_subset(vectors)
        device = run_pico(vectors)
    else:
        device = run_vm(vectors, tmp_path_factory.mktemp("p256"), SOURCE.parent)
    expected = "".join("1" if reference(v) else "0" for v in vectors)
    return Outcome(vectors, device, expected)


def verdicts_of(outcome: Outcome, prefix: str) -> list[tuple[Vector, str, str]]:
    got = [
        (v, d, e)
        for v, d, e in zip(outcome.vectors, outcome.device, outcome.expected, strict=True)
        if v.case.startswith(prefix)
    ]
    assert got, f"no vectors for {prefix}"
    return got


def assert_agree(outcome: Outcome, prefix: str, want: str) -> None:
    """The device agrees with OpenSSL on every vector of the case, and that is ``want``."""
    for v, device, expected in verdicts_of(outcome, prefix):
        label = f"{v.case} ({v.kind}) pub={v.pub.hex()} data={v.data.hex()} sig={v.sig.hex()}"
        assert expected == want, f"vector does not test what it claims: {label}"
        assert device == expected, f"device says {device}, OpenSSL says {expected}: {label}"


def test_valid_signatures_verify(outcome: Outcome) -> None:
    assert len(verdicts_of(outcome, "valid")) >= (10 if len(outcome.vectors) < 200 else 40)
    assert_agree(outcome, "valid", "1")


def test_high_s_is_accepted_like_openssl(outcome: Outcome) -> None:
    assert_agree(outcome, "high_s", "1")


@pytest.mark.parametrize(
    "case",
    [
        "modified_message",
        "modified_r",
        "modified_s",
        "swapped_r_s",
        "wrong_key",
        "r_s_one",
    ],
)
def test_forgery_attempt_is_rejected(outcome: Outcome, case: str) -> None:
    assert_agree(outcome, case, "0")


@pytest.mark.parametrize(
    "case",
    [
        "r_zero",
        "s_zero",
        "r_is_n",
        "s_is_n",
        "r_above_n",
        "s_n_plus_small",
        "r_s_max",
    ],
)
def test_out_of_range_r_or_s_is_rejected(outcome: Outcome, case: str) -> None:
    """r, s must lie in [1, n-1]; without the check r = s = 0 would verify anything."""
    assert_agree(outcome, case, "0")


@pytest.mark.parametrize(
    "case",
    [
        "key_not_on_curve",
        "key_x_flipped",
        "key_prefix_",
        "key_compressed",
        "key_truncated",
        "key_extended",
        "key_all_zero",
        "key_infinity_byte",
        "key_empty",
        "key_y_is_p",
        "key_xy_max",
        "key_x_not_reduced",
        "key_y_not_reduced",
    ],
)
def test_bad_public_key_is_rejected(outcome: Outcome, case: str) -> None:
    """Invalid-curve and encoding attacks: only a canonical 0x04||X||Y point on P-256."""
    assert_agree(outcome, case, "0")


@pytest.mark.parametrize(
    "case",
    [
        "sig_truncated",
        "sig_extended",
        "sig_empty",
        "sig_der",
        "digest_truncated",
        "digest_extended",
        "digest_empty",
        "digest_zero_prefixed",
    ],
)
def test_wrong_length_input_is_rejected(outcome: Outcome, case: str) -> None:
    assert_agree(outcome, case, "0")


@pytest.mark.parametrize(
    "case,want",
    [
        ("digest_special", "1"),  # digest >= n, = n (u1 = 0), = 0
        ("u1_zero", "1"),
        ("sum_is_infinity", "0"),
        ("x_above_n_reduced", "1"),  # x(R) in [n, p): r = x(R) - n must verify
        ("x_above_n_unreduced", "0"),
        ("add_meets_double", "1"),
        ("add_meets_infinity", "1"),
        ("add_ends_at_infinity", "0"),
        ("key_is_g", "1"),
        ("small_x_key", "1"),
        ("small_y_key", "1"),
    ],
)
def test_edge_case_of_the_verification_equation(outcome: Outcome, case: str, want: str) -> None:
    assert_agree(outcome, case, want)


def test_every_vector_agrees_with_openssl(outcome: Outcome) -> None:
    wrong = [
        v.case
        for v, d, e in zip(outcome.vectors, outcome.device, outcome.expected, strict=True)
        if d != e
    ]
    assert not wrong, f"device disagrees with OpenSSL on: {sorted(set(wrong))}"
    assert "?" not in outcome.device


def test_g_table_holds_the_odd_multiples_of_g() -> None:
    mod = p256_module()
    table = mod._g_odd()
    assert len(table) == 2 ** (mod._WG - 1)
    for i in range(len(table) // 2):
        assert (table[2 * i], table[2 * i + 1]) == ec_mul(2 * i + 1, G), f"{2 * i + 1}G"


API_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import p256
from binascii import unhexlify
pub, digest, sig, msg = [unhexlify(a) for a in sys.argv[2:6]]
def show(name, value):
    print("API:%s=%r" % (name, value))
show("bytes", p256.verify(pub, digest, sig))
show("bytearray", p256.verify(bytearray(pub), bytearray(digest), bytearray(sig)))
show("memoryview", p256.verify(memoryview(pub), memoryview(digest), memoryview(sig)))
show("message", p256.verify_message(pub, msg, sig))
show("check_good", p256.check_pubkey(pub))
show("check_bad", p256.check_pubkey(pub[:64] + bytes([pub[64] ^ 1])))
show("check_none", p256.check_pubkey(None))
key = p256.PublicKey(pub)
show("key_twice", [key.verify(digest, sig), key.verify(digest, sig)])
show("key_message", key.verify_message(msg, sig))
show("key_other_digest", key.verify(bytes(32), sig))
show("none_args", [p256.verify(None, digest, sig), p256.verify(pub, None, sig),
                   p256.verify(pub, digest, None), p256.verify_message(pub, None, sig)])
show("wrong_types", [p256.verify("x" * 65, digest, sig), p256.verify(pub, 5, sig),
                     p256.verify(pub, digest, [0] * 64), key.verify(digest, 1.5)])
try:
    p256.PublicKey(pub[:64])
    show("bad_key", "no error")
except ValueError:
    show("bad_key", "ValueError")
"""


def test_api_types_and_key_reuse(tmp_path: Path) -> None:
    """Any buffer type works; junk of any type gives False, never an exception."""
    sg = sign(random.Random(7), b"api check")
    digest = hashlib.sha256(sg.msg).digest()
    script = tmp_path / "api.py"
    script.write_text(API_SCRIPT)
    proc = subprocess.run(
        [
            str(find_micropython()),
            str(script),
            str(SOURCE.parent),
            sg.pub.hex(),
            digest.hex(),
            encode_sig(sg.r, sg.s).hex(),
            sg.msg.hex(),
        ],
        capture_output=True,
        text=True,
        timeout=VM_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    got = dict(ln[4:].split("=", 1) for ln in proc.stdout.splitlines() if ln.startswith("API:"))
    assert got == {
        "bytes": "True",
        "bytearray": "True",
        "memoryview": "True",
        "message": "True",
        "check_good": "True",
        "check_bad": "False",
        "check_none": "False",
        "key_twice": "[True, True]",
        "key_message": "True",
        "key_other_digest": "False",
        "none_args": "[False, False, False, False]",
        "wrong_types": "[False, False, False, False]",
        "bad_key": "'ValueError'",
    }


def test_verifies_in_a_32k_heap_as_compiled_mpy(tmp_path: Path) -> None:
    """The boot guard's budget: a 32 KB GC heap, with p256 compiled by mpy-cross."""
    mpy_cross = Path(find_micropython()).parent / "mpy-cross"
    module_dir = tmp_path / "lib"
    module_dir.mkdir()
    subprocess.run(
        [str(mpy_cross), "-o", str(module_dir / "p256.mpy"), str(SOURCE)], check=True, timeout=60
    )
    rng = random.Random(32)
    vectors = []
    for i in range(4):
        sg = sign(rng, rng.randbytes(100))
        vectors.append(sg.vector("valid", "message" if i % 2 else "digest"))
        vectors.append(sg.vector("bad", "digest", s=N - 1))
    verdicts = run_vm(vectors, tmp_path, module_dir, heapsize="32K")
    assert verdicts == "10" * 4


def test_thumb_module_is_what_the_generator_writes() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "gen_p256_thumb.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_guard_ships_the_assembly_only_to_thumb_boards() -> None:
    for board in ("rp2", "stm32"):
        files = compiled_guard(board)
        assert "/lib/p256_thumb.mpy" in files and "/lib/p256_fast.mpy" in files
    for board in ("unix", "esp32"):  # no Thumb inline assembler there: Python integers
        files = compiled_guard(board)
        assert "/lib/p256.mpy" in files and "/lib/p256_thumb.mpy" not in files
        assert "/lib/p256_fast.mpy" not in files


def test_thumb_field_arithmetic_edge_values_on_cortex_m() -> None:
    """p256_thumb.run's mul, sqr, add, sub against Python integers, on the Cortex-M3 in
    QEMU (armv6m .mpy), for inputs anywhere below 2^256 (not only below p): the values
    where carries and the final fold go furthest (p, 2^256 - 1, powers at the reduction's
    word boundaries) and random ones."""
    rng = random.Random(2561)
    edge = [
        0,
        1,
        2,
        P - 1,
        P,
        P + 1,
        2**256 - 1,
        2**256 - 2,
        2**255,
        2**224,
        2**192,
        2**96,
        2**32 - 1,
        (2**256 - 1) // 3,
        2**256 - P,
    ]
    pairs = [(a, b) for a in edge for b in edge]
    pairs += [(rng.getrandbits(256), rng.getrandbits(256)) for _ in range(200)]
    with Mps2() as board:
        board.put({"p256_thumb.mpy": rp2_modules()["p256_thumb.mpy"]})
        board.exec(
            "import p256_thumb\nws = bytearray(352)\n"
            "PROG = bytes((0, 3, 9, 10,  1, 4, 9, 0,  2, 5, 9, 10,  3, 6, 9, 10))\n"
        )
        for i in range(0, len(pairs), 25):
            chunk = pairs[i : i + 25]
            rows = [(a.to_bytes(32, "little") + b.to_bytes(32, "little")).hex() for a, b in chunk]
            out = board.exec(
                f"R = {rows!r}\nfor r in R:\n"
                "    ws[288:352] = bytes.fromhex(r)\n"
                "    p256_thumb.run(ws, PROG, 4, 1)\n"
                "    print(ws[96:224].hex())\n"
            ).split()
            assert len(out) == len(chunk)
            for (a, b), got in zip(chunk, out, strict=True):
                res = [
                    int.from_bytes(bytes.fromhex(got[64 * k : 64 * k + 64]), "little")
                    for k in range(4)
                ]
                assert [r % P for r in res] == [a * b % P, a * a % P, (a + b) % P, (a - b) % P], (
                    hex(a),
                    hex(b),
                )
        # reps: a program run over and over in one call (the chain's runs of doublings)
        x = rng.getrandbits(256)
        got = board.exec(
            f"ws[288:320] = bytes.fromhex({x.to_bytes(32, 'little').hex()!r})\n"
            "p256_thumb.run(ws, bytes((1, 9, 9, 0)), 1, 37)\n"
            "print(ws[288:320].hex())\n"
        ).strip()
        assert int.from_bytes(bytes.fromhex(got), "little") % P == pow(x, 2**37, P)


def test_naf_digits_are_the_width_w_naf_of_the_scalar() -> None:
    """p256._naf (read from bytes) against the textbook recoding, and its value."""
    mod = p256_module()
    rng = random.Random(5)

    def textbook(k: int, w: int) -> list[int]:
        out = []
        while k:
            d = 0
            if k & 1:
                d = k % (1 << w)
                d -= (1 << w) if d > (1 << (w - 1)) else 0
            out.append(d)
            k = (k - d) >> 1
        return out

    for k in [1, 2, 3, N - 1, N - 32, 2**256 - 1, 2**255] + [
        rng.getrandbits(256) for _ in range(300)
    ]:
        for w in (mod._WG, mod._WQ):
            got = [d - 256 if d > 127 else d for d in mod._naf(k, w)]
            want = textbook(k, w)
            assert got[: len(want)] == want and not any(got[len(want) :])
            assert sum(d << i for i, d in enumerate(got)) == k


def test_frozen_firmware_of_a_thumb_board_gets_the_assembly_path() -> None:
    from mpseal.lockdown.buildfiles import plan_files
    from mpseal.lockdown.plan import build_plan

    rp2 = plan_files(build_plan("rp2"))
    assert {"frozen/p256.py", "frozen/p256_fast.py", "frozen/p256_thumb.py"} <= set(rp2)
    esp = plan_files(build_plan("esp32"))
    assert "frozen/p256.py" in esp and "frozen/p256_thumb.py" not in esp
    assert "frozen/p256_fast.py" not in esp
