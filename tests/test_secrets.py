"""Device secrets sealed on the host, opened by the real MicroPython VM."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpseal.crypto import secretbox
from mpseal.device.vm import find_micropython, runtime_dir
from mpseal.errors import MpsealError

PROBE = Path(__file__).parent / "device" / "secrets_probe.py"
SECRETS = {"wifi_ssid": "factory", "wifi_password": "hunter2-ö", "api_token": "t" * 40}


def open_on_device(tmp_path: Path, sealed: bytes, hardware_id: str) -> str:
    f = tmp_path / "secrets.bin"
    f.write_bytes(sealed)
    res = subprocess.run(
        [str(find_micropython()), str(PROBE), str(runtime_dir()), str(f), hardware_id],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_device_opens_what_the_host_sealed_for_it(tmp_path: Path) -> None:
    sealed = secretbox.seal(json.dumps(SECRETS).encode(), "e6614103e7554f2c")
    out = open_on_device(tmp_path, sealed, "e6614103e7554f2c")
    assert out.startswith("OK ") and json.loads(out[3:]) == SECRETS
    assert b"hunter2" not in sealed and b"factory" not in sealed


def test_another_device_cannot_open_them(tmp_path: Path) -> None:
    sealed = secretbox.seal(b'{"k": 1}', "device-a")
    assert open_on_device(tmp_path, sealed, "device-b").startswith("REFUSED secrets do not open")
    with pytest.raises(MpsealError, match="made for another device"):
        secretbox.open_(sealed, "device-b")


def test_tampering_is_detected_on_the_device(tmp_path: Path) -> None:
    sealed = bytearray(secretbox.seal(b'{"k": 1}', "dev"))
    for pos in (10, 30, 45, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[pos] ^= 1
        assert open_on_device(tmp_path, bytes(bad), "dev").startswith("REFUSED")
        with pytest.raises(MpsealError):
            secretbox.open_(bytes(bad), "dev")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_mpseal_errors(data: bytes) -> None:
    try:
        secretbox.open_(data, "dev")
    except MpsealError:
        pass
