"""The same certificates over DTLS: the device's mbedTLS with ``ssl.PROTOCOL_DTLS_CLIENT``.

The MicroPython unix port here has DTLS (``PROTOCOL_DTLS_CLIENT``/``_SERVER``). Against
``openssl s_server -dtls1_2 -Verify 1`` the device verifies the server by the same DER
anchor and presents the same DER certificate as over TLS, and the same mistakes fail the
same way: certificate rules do not change with the transport (docs/certificates.md).
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import run_mpseal
from pki_support import HOST, MICROPYTHON, OPENSSL, cli_pki

from mpseal.device.vm import vm_env

DTLS_CLIENT = Path(__file__).parent / "device" / "dtls_client.py"


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dtls")
    cli_pki(root, ("DNS:server.test",))
    other = root / "other"
    assert run_mpseal("ca", "init", other, "--org", "Other").returncode == 0
    return root


@contextmanager
def dtls_server(pki: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """``openssl s_server`` over DTLS 1.2 that requires a client certificate."""
    port = _free_udp_port()
    proc = subprocess.Popen(
        [
            OPENSSL,
            "s_server",
            "-dtls1_2",
            "-accept",
            f"{HOST}:{port}",
            "-cert",
            str(pki / "out/server.test-chain.pem"),
            "-key",
            str(pki / "out/server.test.key.pem"),
            "-Verify",
            "1",
            "-CAfile",
            str(pki / "ca/ca-chain.pem"),
            "-naccept",
            "1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(0.3)  # UDP: nothing to connect to; give it time to bind
        yield port, proc
    finally:
        proc.kill()


def server_output(proc: subprocess.Popen[str], until: str, seconds: float = 10.0) -> str:
    """What the server printed, read until the line ``until`` arrived (or ``seconds`` ran out).

    Not ``communicate()`` alone: that closes the server's stdin, and ``s_server`` takes end
    of input as "quit" (it prints DONE and shuts down), so on a loaded machine it could quit
    before it read the datagram the client had already sent.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()  # read the pipe itself: nothing may sit in a Python buffer
    out = b""
    deadline = time.monotonic() + seconds
    while until.encode() not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            break
        out += chunk
    proc.kill()
    proc.wait(timeout=10)
    return (out + os.read(fd, 1 << 20)).decode(errors="replace")


def device(port: int, pki: Path, anchor: Path, hostname: str = "server.test") -> str:
    proc = subprocess.run(
        [
            str(MICROPYTHON),
            str(DTLS_CLIENT),
            HOST,
            str(port),
            str(pki / "out/device-1.der"),
            str(pki / "out/device-1.key.der"),
            str(anchor),
            hostname,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=vm_env(),
    )
    return (proc.stdout.strip().splitlines() or [proc.stderr.strip()])[-1]


def test_mutual_dtls_with_the_tls_certificates(pki: Path) -> None:
    with dtls_server(pki) as (port, proc):
        line = device(port, pki, pki / "ca/root.der")
        out = server_output(proc, until="hello over dtls")
    assert line == "OK", (line, out)
    assert "depth=0 CN = device-1" in out and "hello over dtls" in out, out
    assert "CIPHER is ECDHE-ECDSA" in out, out


def test_dtls_hostname_mismatch_fails_as_over_tls(pki: Path) -> None:
    with dtls_server(pki) as (port, _):
        line = device(port, pki, pki / "ca/root.der", hostname="other.test")
    assert line.startswith("FAIL handshake") and "does not match" in line, line


def test_dtls_server_from_another_ca_fails_as_over_tls(pki: Path) -> None:
    with dtls_server(pki) as (port, _):
        line = device(port, pki, pki / "other/root.der")
    assert line.startswith("FAIL handshake") and "not correctly signed" in line, line


def test_dtls_pem_anchor_fails_to_load_as_over_tls(pki: Path) -> None:
    with dtls_server(pki) as (port, _):
        line = device(port, pki, pki / "ca/root.pem")
    assert line.startswith("FAIL load_verify_locations"), line
