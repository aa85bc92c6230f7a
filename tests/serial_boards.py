"""Boards on a serial line for tests: real micro:bit firmware in QEMU, and the virtual board.

Both are reached through the same :class:`mpseal.device.serialboard.SerialTransport`;
tests get a :class:`SerialBoard` and never care which one it is, except where a
documented fact of the firmware is checked.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mpseal.device.serialboard import SerialTransport
from mpseal.device.sim import VirtualBoard
from mpseal.device.simlink import SimLink, connect

MICROBIT_HEX = Path("/usr/share/firmware-microbit-micropython/firmware.hex")
INSTALL_HINT = (
    "install the Debian packages qemu-system-arm and firmware-microbit-micropython "
    "(scripts/bootstrap.sh does, as root)"
)
PTY_LINE = re.compile(rb"char device redirected to (/dev/pts/\d+)")
BOOT_TIMEOUT = 20.0


def _read_until(fd: int, pattern: re.Pattern[bytes] | bytes, timeout: float, what: str) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while not (pattern.search(data) if isinstance(pattern, re.Pattern) else pattern in data):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(
                f"{what}: nothing matching {pattern!r} within {timeout:.0f}s; got {data[-300:]!r}"
            )
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                pytest.fail(f"{what}: the output ended; got {data[-300:]!r}")
            data += chunk
    return data


@contextmanager
def qemu_microbit() -> Iterator[str]:
    """Start the micro:bit firmware in QEMU; yield the pty of its serial port."""
    qemu = shutil.which("qemu-system-arm")
    if not qemu or not MICROBIT_HEX.is_file():
        pytest.fail(f"the micro:bit in QEMU is missing: {INSTALL_HINT}")
    proc = subprocess.Popen(
        [
            qemu,
            "-M",
            "microbit",
            "-device",
            f"loader,file={MICROBIT_HEX}",
            "-nographic",
            "-serial",
            "pty",
            "-monitor",
            "none",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    hold = -1
    try:
        assert proc.stdout is not None
        found = PTY_LINE.search(
            _read_until(proc.stdout.fileno(), PTY_LINE, BOOT_TIMEOUT, "QEMU did not print its pty")
        )
        assert found
        pts = found.group(1).decode()
        # Held open for the whole test: QEMU keeps the line up while the transport
        # closes and reopens it (with no reader left, it would poll for one each second).
        hold = os.open(pts, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(hold)
        _read_until(hold, b">>> ", BOOT_TIMEOUT, "the micro:bit did not show its REPL banner")
        yield pts
    finally:
        proc.kill()
        proc.wait()
        if hold >= 0:
            os.close(hold)


FIRMWARE_DIR = Path(os.environ.get("MPSEAL_FIRMWARE_DIR", "/work/shared/firmware"))


@contextmanager
def qemu_mps2_an385() -> Iterator[str]:
    """Stock MicroPython v1.28.0 for the Cortex-M3 MPS2-AN385 in QEMU; yield its pty.

    ``-semihosting`` is needed: without it the stock image prints nothing on the UART.
    """
    qemu = shutil.which("qemu-system-arm")
    elf = FIRMWARE_DIR / "micropython-v1.28.0" / "qemu-MPS2_AN385" / "firmware.elf"
    if not qemu or not elf.is_file():
        pytest.fail(f"QEMU or the stock MPS2-AN385 image ({elf}) is missing")
    proc = subprocess.Popen(
        [
            qemu,
            "-M",
            "mps2-an385",
            "-kernel",
            str(elf),
            "-semihosting",
            "-display",
            "none",
            "-serial",
            "pty",
            "-monitor",
            "none",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    hold = -1
    try:
        assert proc.stdout is not None
        found = PTY_LINE.search(
            _read_until(proc.stdout.fileno(), PTY_LINE, BOOT_TIMEOUT, "QEMU did not print its pty")
        )
        assert found
        pts = found.group(1).decode()
        hold = os.open(pts, os.O_RDWR | os.O_NOCTTY)  # keeps the line up between connections
        tty.setraw(hold)
        os.write(hold, b"\r")
        _read_until(hold, b">>> ", BOOT_TIMEOUT, "the MPS2-AN385 did not show its REPL")
        yield pts
    finally:
        proc.kill()
        proc.wait()
        if hold >= 0:
            os.close(hold)


class SerialBoard:
    """A board a test can connect to, reconnect to, and cut off mid-operation."""

    name = ""

    def connect(self) -> SerialTransport:
        raise NotImplementedError

    def cut(self, transport: SerialTransport) -> None:
        """The line (or the power) goes away while ``transport`` is in use."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class MicrobitBoard(SerialBoard):
    """MicroPython 1.9.2 for the micro:bit (nRF51, 16 KB RAM) in QEMU, on a pty."""

    name = "microbit"

    def __init__(self, pts: str) -> None:
        self.pts = pts
        self.open: list[SerialTransport] = []

    def connect(self) -> SerialTransport:
        transport = SerialTransport(self.pts)
        self.open.append(transport)
        return transport

    def cut(self, transport: SerialTransport) -> None:
        transport.drop()  # the cable is pulled; the board keeps running

    def close(self) -> None:
        for transport in self.open:
            transport.close()


class VirtualBoardOnPty(SerialBoard):
    """The virtual board (unix port VM + littlefs flash image) behind a pty."""

    name = "virtual"

    def __init__(self, folder: Path) -> None:
        self.board = VirtualBoard.create(folder, flash_size=512 * 1024)
        self.links: list[tuple[SerialTransport, SimLink]] = []

    def connect(self) -> SerialTransport:
        for transport, link in self.links:  # one VM per flash image at a time
            if link.alive:
                transport.close()
        transport, link = connect(self.board)
        self.links.append((transport, link))
        return transport

    def cut(self, transport: SerialTransport) -> None:
        for t, link in self.links:
            if t is transport:
                link.kill()  # power cut: the VM dies mid-write

    def close(self) -> None:
        for transport, _ in self.links:
            transport.close()
