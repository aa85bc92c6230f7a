"""ESP32 Secure Boot v2 keys and signatures through the real espsecure (PyPI esptool)."""

from __future__ import annotations

import hashlib
import json
import stat
import struct
import subprocess
import sys
from pathlib import Path

import espsecure  # noqa: F401 - esptool is a dependency: missing it fails, never skips
import pytest
from conftest import run_mpseal

from mpseal.errors import FormatError, SignatureError, UsageError
from mpseal.lockdown import esp32_signing as esp

CHIP_ID = {"esp32": 0, "esp32s3": 9}


def app_image(board: str, payload_len: int = 3000) -> bytes:
    """A real ESP app image (header, extended header, one segment, checksum, SHA-256)."""
    seg = bytes((i * 7) & 0xFF for i in range(payload_len))
    seg += b"\x00" * (-len(seg) % 4)
    header = struct.pack("<BBBBI", 0xE9, 1, 2, 0x20, 0x40080000)
    ext = struct.pack("<BBBBHBHH4sB", 0xEE, 0, 0, 0, CHIP_ID[board], 0, 0, 0xFFFF, b"\0" * 4, 1)
    body = header + ext + struct.pack("<II", 0x3FFB0000, len(seg)) + seg
    checksum = 0xEF
    for b in seg:
        checksum ^= b
    body += b"\0" * (15 - len(body) % 16) + bytes([checksum])
    return body + hashlib.sha256(body).digest()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "sb.pem"
    res = run_mpseal("lockdown", "esp32-key", path, "--json")
    assert res.returncode == 0, res.stderr
    return path


def test_image_fixture_is_a_real_esp_app_image(tmp_path: Path) -> None:
    img = tmp_path / "app.bin"
    img.write_bytes(app_image("esp32s3"))
    proc = subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", "esp32s3", "image-info", str(img)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:  # esptool 4.x spells it image_info
        proc = subprocess.run(
            [sys.executable, "-m", "esptool", "--chip", "esp32s3", "image_info", str(img)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert "Checksum" in proc.stdout and "(valid)" in proc.stdout


def test_key_is_rsa3072_private_0600_with_its_efuse_digest(key: Path) -> None:
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert esp.key_scheme(key.read_bytes()) == "rsa3072"
    digest = esp.digest_path_for(key).read_bytes()
    assert len(digest) == 32 and digest == esp.public_key_digest(key)


def test_key_refuses_to_overwrite_and_changes_nothing(key: Path) -> None:
    before = key.read_bytes()
    res = run_mpseal("lockdown", "esp32-key", key)
    assert res.returncode == 2 and "already exists" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert key.read_bytes() == before


def test_round_trip_sign_then_verify_and_tampering_is_refused(key: Path, tmp_path: Path) -> None:
    fw = tmp_path / "micropython.bin"
    fw.write_bytes(app_image("esp32"))
    out = tmp_path / "signed.bin"
    res = run_mpseal("lockdown", "esp32-sign", fw, "--key", key, "-o", out, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["board"] == "esp32" and info["signed_size"] % 4096 == 0
    signed = out.read_bytes()
    assert signed.startswith(fw.read_bytes()) and esp.is_signed(signed)

    res = run_mpseal("lockdown", "esp32-verify", out, "--key", key)
    assert res.returncode == 0, res.stderr
    # espsecure itself agrees (not only mpseal's wrapper):
    proc = subprocess.run(
        [
            *esp.espsecure_command(),
            esp._cmd("verify-signature"),
            "--version",
            "2",
            "--keyfile",
            str(key),
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    for offset in (0, 100, len(signed) - 4096 - 1, len(signed) - 4096 + 40):
        bad = bytearray(signed)
        bad[offset] ^= 0x01
        tampered = tmp_path / f"tampered-{offset}.bin"
        tampered.write_bytes(bytes(bad))
        res = run_mpseal("lockdown", "esp32-verify", tampered, "--key", key)
        assert res.returncode == 3, (offset, res.stdout, res.stderr)
        assert "mpseal: refused:" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert "b'" not in res.stderr  # no Python bytes reprs leak through


def test_signature_by_another_key_is_refused(key: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    esp.generate_key(other, "esp32s3")
    fw = tmp_path / "s3.bin"
    fw.write_bytes(app_image("esp32s3"))
    out = tmp_path / "s3-signed.bin"
    res = esp.sign_image(fw, other, out)  # board read from the image header
    assert res.board == "esp32s3"
    esp.verify_image(out, other)
    with pytest.raises(SignatureError):
        esp.verify_image(out, key)


def test_sign_refuses_wrong_chip_merged_image_signed_image_and_garbage(
    key: Path, tmp_path: Path
) -> None:
    s3 = app_image("esp32s3")
    with pytest.raises(FormatError, match="chip id 9, not esp32"):
        esp.check_image(s3, "esp32")
    with pytest.raises(FormatError, match="not an ESP image"):
        esp.check_image(b"\x7fELF" + bytes(100), "esp32")
    with pytest.raises(FormatError, match="shorter"):
        esp.check_image(b"\xe9\x01", "esp32")
    merged = bytearray(app_image("esp32") + bytes(0x9000))
    # partition table at 0x8000 in flash (0x7000 in a merged image starting at 0x1000)
    merged[0x7000:0x7003] = b"\xaa\x50\x01"
    esp.check_image(bytes(merged), "esp32")  # one lookalike entry is not enough
    merged[0x7020:0x7022] = b"\xaa\x50"
    with pytest.raises(UsageError, match="merged"):
        esp.check_image(bytes(merged), "esp32")
    fw = tmp_path / "fw.bin"
    fw.write_bytes(app_image("esp32"))
    once = tmp_path / "once.bin"
    esp.sign_image(fw, key, once, "esp32")
    with pytest.raises(UsageError, match="already carries"):
        esp.sign_image(once, key, tmp_path / "twice.bin", "esp32")
    with pytest.raises(UsageError, match="already exists"):
        esp.sign_image(fw, key, once, "esp32")
    res = run_mpseal(
        "lockdown", "esp32-sign", tmp_path / "nope.bin", "--key", key, "-o", tmp_path / "x.bin"
    )
    assert res.returncode == 2 and "not found" in res.stderr


def test_import_checks_what_the_chip_accepts(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def pem(k: object, password: bytes | None = None) -> bytes:
        enc = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return k.private_bytes(
            serialization.Encoding.PEM,  # type: ignore[attr-defined]
            serialization.PrivateFormat.PKCS8,
            enc,
        )

    rsa2048 = tmp_path / "rsa2048.pem"
    rsa2048.write_bytes(pem(rsa.generate_private_key(65537, 2048)))
    p256 = tmp_path / "p256.pem"
    p256.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    locked = tmp_path / "locked.pem"
    locked.write_bytes(pem(rsa.generate_private_key(65537, 3072), b"secret"))
    good = tmp_path / "good.pem"
    good.write_bytes(pem(rsa.generate_private_key(65537, 3072)))

    with pytest.raises(UsageError, match="RSA-2048"):
        esp.import_key(tmp_path / "a.pem", rsa2048, "esp32")
    with pytest.raises(UsageError, match="accepts rsa3072 keys only"):
        esp.import_key(tmp_path / "b.pem", p256, "esp32s3")
    with pytest.raises(UsageError, match="passphrase"):
        esp.import_key(tmp_path / "c.pem", locked, "esp32")
    assert not any((tmp_path / n).exists() for n in ("a.pem", "b.pem", "c.pem"))

    res = run_mpseal(
        "lockdown",
        "esp32-key",
        tmp_path / "imported.pem",
        "--import",
        good,
        "--board",
        "esp32s3",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["scheme"] == "rsa3072"
    assert (tmp_path / "imported.pem").read_bytes() == good.read_bytes()
    assert stat.S_IMODE((tmp_path / "imported.pem").stat().st_mode) == 0o600


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    res = run_mpseal("lockdown", "esp32-key", tmp_path / "k.pem", "--board", "rp2")
    assert res.returncode == 2 and "no ESP Secure Boot v2" in res.stderr
    res = run_mpseal("lockdown", "esp32-key", tmp_path / "k.pem", "--scheme", "ecdsa256")
    assert res.returncode == 2 and "accepts rsa3072 keys only" in res.stderr
    for r in (res,):
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "k.pem").exists()


def test_missing_espsecure_is_a_tool_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from mpseal.errors import ToolError

    monkeypatch.setattr(esp.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(esp.shutil, "which", lambda name: None)
    with pytest.raises(ToolError, match=r"esptool>=4\.8"):
        esp.espsecure_command()
