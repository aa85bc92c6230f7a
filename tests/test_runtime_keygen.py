"""Keys born on the device: P-256 key generation, ECDSA signing and a PKCS#10 CSR made by
runtime/p256_sign.py and runtime/mpseal_csr.py, every output checked by ``cryptography``.

Each test runs on three devices: the unix-port VM (Python integers), stock MicroPython on
the MPS2-AN385 Cortex-M3 in QEMU and the stock RPI_PICO image on the virtual Pico
(RP2040, its real os.urandom), both with the modules compiled for the RP2040 (armv6m
.mpy: the p256_thumb assembly path). One device session per path makes all the outputs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.x509.oid import NameOID
from pico_exec import pico_with
from qemu_mps2 import Mps2

from mpseal.device.vm import find_micropython, runtime_dir
from mpseal.formats.boards import get_board
from mpseal.packaging.mpycross import CompileOptions, Compiler, Module

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
MODULES = ("p256", "p256_fast", "p256_thumb", "p256_sign", "mpseal_csr")
# RFC 6979 A.2.5: P-256, SHA-256
RFC_PRIV = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
RFC_SIGS = {
    b"sample": (
        0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
        0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
    ),
    b"test": (
        0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
        0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083,
    ),
}
KEYS = 6

# Runs on the device; KEY_PATH is set before it. Prints one result per line.
DEVICE_SCRIPT = """
import p256, p256_sign, mpseal_csr, hashlib
from binascii import hexlify, unhexlify
def h(b):
    return hexlify(b).decode()
print("FAST", p256.FAST)
rfc = unhexlify("%(rfc)s")
print("RFCPUB", h(p256_sign.public_key(rfc)))
for m in (b"sample", b"test"):
    print("RFCSIG", h(m), h(p256_sign.sign_message(rfc, m, extra=b"")))
for i in range(%(keys)d):
    priv, pub = p256_sign.generate()
    m = ("message %%d" %% i).encode()
    print("KEY", h(priv), h(pub), h(m), h(p256_sign.sign_message(priv, m)))
d = hashlib.sha256(b"same digest").digest()
print("TWICE", h(pub), h(d), h(p256_sign.sign(priv, d)), h(p256_sign.sign(priv, d)))
print("DER", h(p256_sign.der_signature(p256_sign.sign(priv, d))), h(pub), h(d))
try:  # the self-check against a public key that is not the key's: nothing released
    p256_sign.sign(priv, d, pub=p256_sign.public_key(rfc))
    print("WRONGPUB", "released")
except RuntimeError:
    print("WRONGPUB", "refused")
dev = mpseal_csr.create_key(KEY_PATH)
try:
    mpseal_csr.create_key(KEY_PATH)
    print("SECOND", "overwrote")
except ValueError:
    print("SECOND", "refused")
print("DEVPUB", h(dev), h(mpseal_csr.public_key(KEY_PATH)))
print("TLSKEY", "-", "-", h(mpseal_csr.tls_key(KEY_PATH)))
print("CSR", h(mpseal_csr.csr([("C", "DE"), ("O", "Acme Sensors"), ("CN", "sensor-0042")],
                             KEY_PATH, dns=("sensor-0042.fleet.example",))))
print("CSRMIN", h(mpseal_csr.csr([("CN", "x")], KEY_PATH)))
print("DEVSIG", h(d), h(mpseal_csr.sign(d, KEY_PATH)))
"""


@dataclass
class Run:
    path: str
    lines: list[list[str]]

    def rows(self, tag: str) -> list[list[str]]:
        got = [ln[1:] for ln in self.lines if ln and ln[0] == tag]
        assert got, f"no {tag} line from the device ({self.path})"
        return got


def script(key_path: str) -> str:
    return f"KEY_PATH = {key_path!r}\n" + DEVICE_SCRIPT % {"rfc": f"{RFC_PRIV:064x}", "keys": KEYS}


def run_unix(tmp: Path) -> list[list[str]]:
    (tmp / "keys").mkdir()
    drv = tmp / "drv.py"
    drv.write_text(
        f"import sys\nsys.path.insert(0, {str(runtime_dir())!r})\n"
        + script(str(tmp / "keys" / "device.key"))
    )
    proc = subprocess.run(
        [str(find_micropython()), str(drv)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return [ln.split() for ln in proc.stdout.splitlines()]


def rp2_mpy() -> dict[str, bytes]:
    board = get_board("rp2")
    compiler = Compiler(
        CompileOptions(board.mpy, board.arch, opt=2, source_lines=False), cache_dir=None
    )
    out = compiler.compile_all(
        [Module(f"{m}.py", (runtime_dir() / f"{m}.py").read_bytes()) for m in MODULES]
    )
    return {name[:-3] + ".mpy": data for name, data in out.items()}


# The MPS2 has no random generator (no os.urandom): p256_sign must refuse to make a key,
# and then gets a test source (SHA-256 of host randomness and a counter) in its place.
MPS2_ENTROPY = """
import p256_sign, hashlib
try:
    p256_sign.generate()
    print("NORNG", "generated")
except OSError:
    print("NORNG", "refused")
_seed = %r
_ctr = [0]
def _test_urandom(n):
    out = b""
    while len(out) < n:
        _ctr[0] += 1
        out += hashlib.sha256(_seed + str(_ctr[0]).encode()).digest()
    return out[:n]
p256_sign.urandom = _test_urandom
"""


def run_mps2() -> list[list[str]]:
    with Mps2(timeout=600) as board:
        board.put(rp2_mpy())
        out = board.exec(MPS2_ENTROPY % os.urandom(32))
        out += board.exec(script("/ram/device.key"))
    return [ln.split() for ln in out.splitlines()]


def run_pico() -> list[list[str]]:
    with pico_with(rp2_mpy()) as link:
        out = link.exec(script("/device.key"), timeout=600)
    return [ln.split() for ln in out.splitlines()]


@pytest.fixture(
    scope="module", params=["unix-vm-python-ints", "cortex-m-thumb-asm", "rp2040-thumb-asm"]
)
def device(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    if request.param == "rp2040-thumb-asm":
        run = Run(request.param, run_pico())
        assert run.rows("FAST") == [["True"]]
    elif request.param == "cortex-m-thumb-asm":
        run = Run(request.param, run_mps2())
        assert run.rows("FAST") == [["True"]]
        assert run.rows("NORNG") == [["refused"]]  # no weaker source behind its back
    else:
        run = Run(request.param, run_unix(tmp_path_factory.mktemp("keygen")))
        assert run.rows("FAST") == [["False"]]
    return run


def pubkey(hexpub: str) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(hexpub))


def verify_raw(pub: ec.EllipticCurvePublicKey, digest: bytes, sig: bytes) -> None:
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    pub.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def test_public_key_of_a_known_scalar_matches_openssl(device: Run) -> None:
    want = (
        ec.derive_private_key(RFC_PRIV, ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    assert device.rows("RFCPUB") == [[want.hex()]]


def test_rfc6979_vectors_without_added_entropy(device: Run) -> None:
    """extra=b"" is plain RFC 6979: the published (r, s), s made low."""
    for msg_hex, sig_hex in device.rows("RFCSIG"):
        r, s = RFC_SIGS[bytes.fromhex(msg_hex)]
        sig = bytes.fromhex(sig_hex)
        assert int.from_bytes(sig[:32], "big") == r
        assert int.from_bytes(sig[32:], "big") == min(s, N - s)


def test_generated_keys_and_their_signatures_verify_with_openssl(device: Run) -> None:
    rows = device.rows("KEY")
    assert len(rows) == KEYS
    assert len({priv for priv, *_ in rows}) == KEYS  # os.urandom: all different
    for priv_hex, pub_hex, msg_hex, sig_hex in rows:
        d = int(priv_hex, 16)
        assert 0 < d < N
        want = ec.derive_private_key(d, ec.SECP256R1()).public_key()
        assert pubkey(pub_hex) == want
        sig = bytes.fromhex(sig_hex)
        assert int.from_bytes(sig[32:], "big") <= N // 2  # low s
        verify_raw(want, hashlib.sha256(bytes.fromhex(msg_hex)).digest(), sig)


def test_added_entropy_gives_a_fresh_nonce_for_the_same_digest(device: Run) -> None:
    ((pub_hex, d_hex, sig1, sig2),) = device.rows("TWICE")
    assert sig1[:64] != sig2[:64]  # different r: different nonces
    for sig in (sig1, sig2):
        verify_raw(pubkey(pub_hex), bytes.fromhex(d_hex), bytes.fromhex(sig))


def test_der_signature_is_what_openssl_reads(device: Run) -> None:
    ((der_hex, pub_hex, d_hex),) = device.rows("DER")
    pubkey(pub_hex).verify(
        bytes.fromhex(der_hex), bytes.fromhex(d_hex), ec.ECDSA(Prehashed(hashes.SHA256()))
    )


def test_tampered_device_signature_is_rejected_by_openssl(device: Run) -> None:
    ((d_hex, sig_hex),) = device.rows("DEVSIG")
    pub = pubkey(device.rows("DEVPUB")[0][0])
    verify_raw(pub, bytes.fromhex(d_hex), bytes.fromhex(sig_hex))
    bad = bytearray.fromhex(sig_hex)
    bad[5] ^= 1
    with pytest.raises(InvalidSignature):
        verify_raw(pub, bytes.fromhex(d_hex), bytes(bad))


def test_signature_failing_its_self_check_is_not_released(device: Run) -> None:
    """As if a fault (or a damaged key file) made the key and its public point disagree."""
    assert device.rows("WRONGPUB") == [["refused"]]


def test_device_key_file_is_never_overwritten(device: Run) -> None:
    assert device.rows("SECOND") == [["refused"]]
    ((_, _, key_hex),) = device.rows("TLSKEY")  # the file is SEC1 DER of the same key
    key = serialization.load_der_private_key(bytes.fromhex(key_hex), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == pubkey(device.rows("DEVPUB")[0][0])
    ((made, read),) = device.rows("DEVPUB")
    assert made == read


def test_csr_made_on_the_device_is_valid_for_openssl(device: Run) -> None:
    csr = x509.load_der_x509_csr(bytes.fromhex(device.rows("CSR")[0][0]))
    assert csr.is_signature_valid
    assert csr.signature_hash_algorithm is not None
    assert csr.signature_hash_algorithm.name == "sha256"
    assert csr.public_key() == pubkey(device.rows("DEVPUB")[0][0])
    name = csr.subject
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sensor-0042"
    assert name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Acme Sensors"
    assert name.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "DE"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["sensor-0042.fleet.example"]
    # and openssl's own parser agrees
    proc = subprocess.run(
        ["openssl", "req", "-inform", "DER", "-noout", "-verify"],
        input=csr.public_bytes(serialization.Encoding.DER),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    minimal = x509.load_der_x509_csr(bytes.fromhex(device.rows("CSRMIN")[0][0]))
    assert minimal.is_signature_valid and len(minimal.extensions) == 0
