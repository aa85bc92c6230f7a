"""ESP32 Secure Boot v2 keys and signatures, through Espressif's own ``espsecure``.

mpseal does not reimplement the signature block: it runs the ``espsecure`` of the
installed ``esptool`` package (``python -m espsecure``, else the console script)
and translates its failures at this edge: a missing tool is a ToolError, an image
that does not verify is a SignatureError, a wrong input a Format/UsageError. Nothing
of espsecure's own output reaches the caller except as one line of such an error.

Before espsecure sees a file, mpseal checks what espsecure does not: the key type
the chip accepts (ESP32 and ESP32-S3: RSA-3072 only), that the image is one ESP
app or bootloader image for that chip (not a merged firmware.bin, not already
signed), and size limits. Keys are written 0600 and never overwritten.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from mpseal.errors import ConfigError, FormatError, SignatureError, ToolError, UsageError
from mpseal.fsutil import read_limited, write_atomic

KEY_MAX_LENGTH = 16 * 1024
IMAGE_MAX_LENGTH = 16 * 1024 * 1024  # the largest ESP32 flash
SECTOR = 4096
TOOL_TIMEOUT = 120.0

ESP_IMAGE_MAGIC = 0xE9
SIG_BLOCK_MAGIC = 0xE7
PARTITION_TABLE_MAGIC = b"\xaa\x50"

# Secure Boot v2 schemes per chip (ESP-IDF Kconfig / soc_caps: RSA on ESP32 v3.0+ and ESP32-S3;
# ECDSA only on later chips such as the ESP32-C2/C6/H2, which mpseal does not target).
CHIP_SCHEMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "esp32": ("rsa3072",),
        "esp32s3": ("rsa3072",),
    }
)
SCHEMES = ("rsa3072", "ecdsa256")
# chip_id in the extended image header (esptool targets: IMAGE_CHIP_ID)
CHIP_IMAGE_ID: Mapping[str, int] = MappingProxyType({"esp32": 0, "esp32s3": 9})
# Where the bootloader sits in flash: a merged image shows the partition table at 0x8000.
BOOTLOADER_OFFSET: Mapping[str, int] = MappingProxyType({"esp32": 0x1000, "esp32s3": 0x0})


@dataclass(frozen=True)
class KeyInfo:
    path: Path
    scheme: str
    digest: bytes  # SHA-256 of the public key as burned into eFuse (espsecure digest)
    digest_path: Path


@dataclass(frozen=True)
class SignResult:
    output: Path
    board: str
    input_size: int
    signed_size: int
    digest: bytes


# --------------------------------------------------------------------------- the tool


def espsecure_command() -> list[str]:
    """How to run espsecure: this interpreter's module if installed, else the console script."""
    if importlib.util.find_spec("espsecure") is not None:
        return [sys.executable, "-m", "espsecure"]
    exe = shutil.which("espsecure") or shutil.which("espsecure.py")
    if exe:
        return [exe]
    raise ToolError("espsecure is not installed; install it with: pip install 'esptool>=4.8'")


def _major_version() -> int:
    try:
        return int(importlib.metadata.version("esptool").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 4


def _cmd(name: str) -> str:
    """esptool >= 5 spells commands with dashes; 4.x with underscores."""
    return name if _major_version() >= 5 else name.replace("-", "_")


def _run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    try:
        return subprocess.run(
            [*espsecure_command(), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=TOOL_TIMEOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise ToolError(
            "espsecure is not installed; install it with: pip install 'esptool>=4.8'"
        ) from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"espsecure did not finish within {TOOL_TIMEOUT:.0f} s") from None


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("espsecure v", "WARNING: Deprec"))]
    for ln in reversed(lines):
        if "error" in ln.lower() or "fatal" in ln.lower() or "could not" in ln.lower():
            return _clean(ln.removeprefix("A fatal error occurred:"))
    return _clean(lines[-1]) if lines else f"exit status {proc.returncode}"


def _clean(line: str) -> str:
    """One readable line: no Python bytes reprs, bounded length."""
    return re.sub(r"\s*b['\"].*$", "", line).strip().rstrip(".")[:300]


# --------------------------------------------------------------------------- keys


def _check_scheme(board: str, scheme: str) -> None:
    if board not in CHIP_SCHEMES:
        raise ConfigError(
            f"board {board!r} has no ESP Secure Boot v2; choose one of: {', '.join(CHIP_SCHEMES)}"
        )
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    if scheme not in CHIP_SCHEMES[board]:
        raise UsageError(
            f"{board} Secure Boot v2 accepts {', '.join(CHIP_SCHEMES[board])} "
            f"keys only, not {scheme}"
        )


def key_scheme(pem: bytes, what: str = "key") -> str:
    """The Secure Boot v2 scheme of a PEM private key; refuses anything espsecure cannot use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if b"ENCRYPTED" in pem:
        raise UsageError(
            f"{what} is passphrase-protected; espsecure cannot use it (sign with "
            "an HSM via espsecure --hsm, or store the key unencrypted offline)"
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise FormatError(f"{what} is not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size != 3072:
            raise UsageError(f"{what} is RSA-{key.key_size}; Secure Boot v2 needs RSA-3072")
        return "rsa3072"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return "ecdsa256"
    raise UsageError(f"{what} is neither RSA-3072 nor ECDSA P-256")


def _check_verify_key(pem: bytes, path: Path) -> None:
    """A verification key may be the private key or its public half (PEM)."""
    from cryptography.hazmat.primitives import serialization

    if b"PRIVATE KEY" in pem:
        key_scheme(pem, f"key {path}")
        return
    try:
        serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise FormatError(f"key {path} is not a PEM private or public key") from None


def public_key_digest(key_path: Path) -> bytes:
    """SHA-256 digest of the public key, exactly as espsecure computes it for the eFuse."""
    with tempfile.TemporaryDirectory(prefix="mpseal-esp-") as tmp:
        out = Path(tmp) / "digest.bin"
        proc = _run(
            [_cmd("digest-sbv2-public-key"), "--keyfile", str(key_path), "--output", str(out)]
        )
        if proc.returncode != 0 or not out.is_file():
            raise ToolError(f"espsecure could not digest the public key: {_last_line(proc)}")
        digest = out.read_bytes()
    if len(digest) != 32:
        raise ToolError(f"espsecure wrote a {len(digest)}-byte digest, expected 32")
    return digest


def digest_path_for(key_path: Path) -> Path:
    return key_path.with_name(key_path.stem + ".digest.bin")


def generate_key(path: Path, board: str, scheme: str | None = None) -> KeyInfo:
    """Generate a Secure Boot v2 signing key with espsecure; write it 0600, never overwrite."""
    scheme = scheme or CHIP_SCHEMES.get(board, ("rsa3072",))[0]
    _check_scheme(board, scheme)
    _refuse_existing(path)
    with tempfile.TemporaryDirectory(prefix="mpseal-esp-") as tmp:  # 0700: private
        tmp_key = Path(tmp) / "key.pem"
        proc = _run(
            [_cmd("generate-signing-key"), "--version", "2", "--scheme", scheme, str(tmp_key)]
        )
        if proc.returncode != 0 or not tmp_key.is_file():
            raise ToolError(f"espsecure could not generate the key: {_last_line(proc)}")
        pem = tmp_key.read_bytes()
    return _store_key(path, pem, board)


def import_key(path: Path, source: Path, board: str) -> KeyInfo:
    """Copy an existing PEM key after checking the chip accepts it; write it 0600."""
    pem = read_limited(source, KEY_MAX_LENGTH, "key file")
    _check_scheme(board, key_scheme(pem, f"key {source}"))
    _refuse_existing(path)
    return _store_key(path, pem, board)


def _refuse_existing(path: Path) -> None:
    for p in (path, digest_path_for(path)):
        if p.exists():
            raise UsageError(f"{p} already exists; refusing to overwrite it (move it away first)")


def _store_key(path: Path, pem: bytes, board: str) -> KeyInfo:
    scheme = key_scheme(pem)
    _check_scheme(board, scheme)
    write_atomic(path, pem, mode=0o600, exclusive=True)
    digest = public_key_digest(path)
    dpath = digest_path_for(path)
    write_atomic(dpath, digest, mode=0o644, exclusive=True)
    return KeyInfo(path, scheme, digest, dpath)


def load_key(path: Path, board: str) -> bytes:
    pem = read_limited(path, KEY_MAX_LENGTH, "signing key")
    _check_scheme(board, key_scheme(pem, f"key {path}"))
    return pem


# --------------------------------------------------------------------------- images


def image_board(data: bytes) -> str:
    """The board an ESP image header names (chip id), or FormatError."""
    if len(data) < 24:
        raise FormatError("not an ESP image: shorter than its 24-byte header")
    if data[0] != ESP_IMAGE_MAGIC:
        raise FormatError(f"not an ESP image: first byte 0x{data[0]:02x}, expected 0xe9")
    (chip_id,) = struct.unpack_from("<H", data, 12)
    for board, cid in CHIP_IMAGE_ID.items():
        if cid == chip_id:
            return board
    raise FormatError(
        f"ESP image for chip id {chip_id}: not a board mpseal signs for "
        f"({', '.join(CHIP_IMAGE_ID)})"
    )


def check_image(data: bytes, board: str) -> None:
    """An ESP app or bootloader image for ``board``, unsigned, not a merged flash image."""
    if board not in CHIP_IMAGE_ID:
        raise ConfigError(
            f"board {board!r} is not an ESP32 board; choose one of: {', '.join(CHIP_IMAGE_ID)}"
        )
    if len(data) < 24 or data[0] != ESP_IMAGE_MAGIC:
        image_board(data)  # raises the precise FormatError
    (chip_id,) = struct.unpack_from("<H", data, 12)
    if chip_id != CHIP_IMAGE_ID[board]:
        raise FormatError(
            f"image is built for chip id {chip_id}, not {board} (chip id {CHIP_IMAGE_ID[board]})"
        )
    if _looks_merged(data, board):
        raise UsageError(
            "this is a merged flash image (bootloader + partition table + app); "
            "sign the bootloader and the app image separately"
        )
    if is_signed(data):
        raise UsageError("image already carries a Secure Boot v2 signature block")


def _looks_merged(data: bytes, board: str) -> bool:
    """A partition table where a merged image has it (0x8000 in flash), followed by a second
    entry or its MD5 record: a plain app image almost never matches both by chance."""
    at = 0x8000 - BOOTLOADER_OFFSET[board]
    first, second = data[at : at + 2], data[at + 32 : at + 34]
    return (
        first == PARTITION_TABLE_MAGIC
        and data[at + 2 : at + 3] in (b"\x00", b"\x01")
        and second in (PARTITION_TABLE_MAGIC, b"\xeb\xeb")
    )


def is_signed(data: bytes) -> bool:
    """A sector-aligned image whose last sector starts with a signature block."""
    return len(data) >= 2 * SECTOR and len(data) % SECTOR == 0 and data[-SECTOR] == SIG_BLOCK_MAGIC


def sign_image(firmware: Path, key: Path, output: Path, board: str | None = None) -> SignResult:
    """Sign an ESP app/bootloader image with espsecure (Secure Boot v2); refuses to overwrite.

    ``board`` defaults to the chip named in the image header."""
    data = read_limited(firmware, IMAGE_MAX_LENGTH, "firmware image")
    board = board or image_board(data)
    check_image(data, board)
    load_key(key, board)
    if output.exists():
        raise UsageError(f"{output} already exists; refusing to overwrite it")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mpseal-sign-", dir=output.parent) as tmp:
        tmp_in, tmp_out = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        tmp_in.write_bytes(data)  # sign exactly the bytes checked above
        proc = _run(
            [
                _cmd("sign-data"),
                "--version",
                "2",
                "--keyfile",
                str(key),
                "--output",
                str(tmp_out),
                str(tmp_in),
            ]
        )
        if proc.returncode != 0 or not tmp_out.is_file():
            raise ToolError(f"espsecure could not sign {firmware}: {_last_line(proc)}")
        signed = tmp_out.read_bytes()
        if not is_signed(signed) or signed[: len(data)] != data:
            raise ToolError("espsecure produced an image mpseal does not recognise as signed")
        write_atomic(output, signed, exclusive=True)
    return SignResult(output, board, len(data), len(signed), hashlib.sha256(signed).digest())


def verify_image(signed: Path, key: Path) -> None:
    """Check a signed image against a key with espsecure; SignatureError if it does not hold."""
    data = read_limited(signed, IMAGE_MAX_LENGTH + SECTOR * 2, "signed image")
    _check_verify_key(read_limited(key, KEY_MAX_LENGTH, "key"), key)
    if not is_signed(data):
        raise SignatureError(f"{signed} carries no Secure Boot v2 signature block")
    proc = _run([_cmd("verify-signature"), "--version", "2", "--keyfile", str(key), str(signed)])
    if proc.returncode != 0:
        raise SignatureError(f"{signed} does not verify with {key}: {_last_line(proc)}")
