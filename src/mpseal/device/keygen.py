"""Keys born on the device, driven from the host: the board makes its P-256 key and a CSR.

    device_csr(transport, board, subject, dns=()) -> DeviceCsr(public_key, csr_der, created)

1. The signing modules go to ``/lib`` compiled for the board (``p256_sign``,
   ``mpseal_csr``, and the guard's ``p256`` modules if the board lacks them); files
   already there byte for byte are not rewritten.
2. The board creates its key (``mpseal_csr.create_key``: ``os.urandom``, written
   atomically as SEC1 DER to ``/mpseal/id/device.key.der``, where provisioning keeps the
   key the board's TLS loads). A board that already has one is refused unless
   ``reuse=True`` (then the request is for the key it has): a second key would orphan the
   certificate of the first.
3. The board builds and signs the PKCS#10 request; the host checks it with
   ``cryptography``: the signature, the public key the board reported, the subject asked.

Only the public key and the request cross the line: nothing here reads the key file.
What protects that file on the board is its lockdown (T0) and, where the chip has it,
flash protection (T3); signing on the board is not constant-time (see
docs/certificates.md). ``mpseal provision --keygen device`` calls this.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mpseal.device.guard_install import compiled_guard
from mpseal.device.probe import file_digests
from mpseal.device.transport import Progress, Transport
from mpseal.device.vm import runtime_dir
from mpseal.errors import BadDataError, PolicyError, UsageError
from mpseal.formats.boards import get_board
from mpseal.packaging.mpycross import CompileOptions, Compiler, Module

KEY_PATH = "/mpseal/id/device.key.der"  # provisioning's KEY (fleet/provision.py)
SIGN_MODULES = ("p256_sign", "mpseal_csr")
VERIFIER = ("/lib/p256.mpy", "/lib/p256_fast.mpy", "/lib/p256_thumb.mpy")
SUBJECT_OIDS = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
}
KEYGEN_TIMEOUT = 300.0  # s: key, CSR and its self-check on a slow board, emulated too
CSR_MAX = 4096


@dataclass(frozen=True)
class DeviceCsr:
    public_key: bytes  # 65-byte SEC1 point
    csr_der: bytes
    created: bool  # False: the request is for the key the board already had


def signing_files(board: str) -> dict[str, bytes]:
    """Device path -> bytes of the modules the board needs to make its key and CSR."""
    b = get_board(board)
    files = {p: d for p, d in compiled_guard(board).items() if p in VERIFIER}
    compiler = Compiler(CompileOptions(b.mpy, b.arch, opt=2, source_lines=False), cache_dir=None)
    out = compiler.compile_all(
        [Module(f"{m}.py", (runtime_dir() / f"{m}.py").read_bytes()) for m in SIGN_MODULES]
    )
    files.update({f"/lib/{name[:-3]}.mpy": data for name, data in out.items()})
    return files


def check_subject(subject: list[tuple[str, str]], dns: tuple[str, ...]) -> None:
    if not subject:
        raise UsageError("the certificate request needs a subject (at least CN)")
    for attr, value in subject:
        if attr not in SUBJECT_OIDS:
            raise UsageError(
                f"unknown subject attribute {attr!r}; use one of {', '.join(SUBJECT_OIDS)}"
            )
        if not value or any(ord(c) < 0x20 for c in value) or len(value) > 64:
            raise UsageError(f"subject {attr} must be 1-64 printable characters")
        if attr == "C" and (len(value) != 2 or not value.isalpha()):
            raise UsageError("subject C must be a two-letter country code")
    for name in dns:
        if not name or len(name) > 253 or any(ord(c) <= 0x20 or ord(c) > 0x7E for c in name):
            raise UsageError(f"not a DNS name: {name!r}")


def device_csr(
    transport: Transport,
    board: str,
    subject: list[tuple[str, str]],
    dns: tuple[str, ...] = (),
    *,
    reuse: bool = False,
    key_path: str = KEY_PATH,
    progress: Progress | None = None,
) -> DeviceCsr:
    check_subject(subject, dns)
    files = signing_files(board)
    have = file_digests(transport, [*files, key_path], digest=True)
    if key_path in have and not reuse:
        raise PolicyError(
            f"the board already has a device key ({key_path}); a new one "
            "would orphan its certificate: make the request for it (reuse)"
        )
    for path, blob in files.items():
        if have.get(path) != (len(blob), hashlib.sha256(blob).digest()):
            transport.write_file(path, blob, progress)
    created = key_path not in have
    folder = key_path.rsplit("/", 1)[0]
    make = (
        (
            f"import os\ntry:\n    os.mkdir({folder!r})\nexcept OSError:\n    pass\n"
            "mpseal_csr.create_key(K)\n"
        )
        if created
        else ""
    )
    out = transport.exec(
        "import mpseal_csr\nfrom binascii import hexlify\n"
        f"K = {key_path!r}\n{make}"
        "print('PUB', hexlify(mpseal_csr.public_key(K)).decode())\n"
        f"print('CSR', hexlify(mpseal_csr.csr({list(subject)!r}, K, {tuple(dns)!r})).decode())\n",
        timeout=KEYGEN_TIMEOUT,
    )
    got = dict(line.split(" ", 1) for line in out.splitlines() if line[:4] in ("PUB ", "CSR "))
    try:
        pub = bytes.fromhex(got["PUB"].strip())
        der = bytes.fromhex(got["CSR"].strip())
    except (KeyError, ValueError):
        raise BadDataError("the board did not answer with a public key and a request") from None
    if len(der) > CSR_MAX:
        raise BadDataError("the board's certificate request is too large")
    check_csr(der, pub, subject, dns)
    return DeviceCsr(pub, der, created)


def check_csr(
    der: bytes, pub: bytes, subject: list[tuple[str, str]], dns: tuple[str, ...]
) -> x509.CertificateSigningRequest:
    """The request verifies, carries ``pub`` and exactly the subject and names asked for."""
    try:
        csr = x509.load_der_x509_csr(der)
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
    except ValueError as e:
        raise BadDataError(f"the board's certificate request does not parse: {e}") from None
    if not csr.is_signature_valid:
        raise BadDataError("the board's certificate request has a bad signature")
    got = csr.public_key()
    if not isinstance(got, ec.EllipticCurvePublicKey) or got.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    ) != key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    ):
        raise BadDataError("the board's certificate request is for another key")
    want = [(SUBJECT_OIDS[a], v) for a, v in subject]
    if [(a.oid, a.value) for a in csr.subject] != want:
        raise BadDataError("the board's certificate request has another subject")
    names: list[str] = []
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    if names != list(dns):
        raise BadDataError("the board's certificate request has other DNS names")
    return csr
