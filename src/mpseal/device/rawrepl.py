"""MicroPython's raw REPL protocol on mpremote's serial transport, with deadlines.

mpremote's ``SerialTransport`` opens the line (``serial.serial_for_url``: a device,
a pty path, ``socket://host:port``); this subclass replaces its protocol methods
that print to stdout, block without a deadline on a pty, or always soft-reset
(a soft reset ends the unix port's process): we enter the raw REPL without a
reset ("resume"), use raw-paste mode where the firmware has it (flow controlled),
and otherwise plain raw REPL paced like microfs (32 bytes per 10 ms).

Every byte written to and read from the line is counted (:class:`WireCounter`).
Every foreign exception (mpremote's ``TransportError``, pyserial's
``SerialException``, ``OSError``) leaves this module as a :class:`LinkError`.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import serial
from mpremote import transport as mp_transport
from mpremote.transport_serial import SerialTransport as MpremoteSerial

from mpseal.device.transport import LinkError
from mpseal.errors import FormatError, UsageError

BANNER = b"raw REPL; CTRL-B to exit"
ERR_MAX = 4096
# Plain raw REPL has no flow control: the micro:bit's UART buffer is small and drops
# bytes under bursts (QEMU shows drops at 64 bytes per 10 ms). microfs, the micro:bit
# file tool, sends 32 bytes per 10 ms; so do we. Raw-paste mode needs no pacing.
PACE_BYTES = 32
PACE_SECONDS = 0.01
ECHO_WINDOW = 32  # bytes in flight while streaming lines to input() (see exec_echoed)


@dataclass
class WireCounter:
    """Bytes written to (``tx``) and read from (``rx``) the line since it was opened."""

    tx: int = 0
    rx: int = 0


class CountingSerial:
    """Wraps a pyserial object; counts every byte that crosses it."""

    def __init__(self, inner: Any, counter: WireCounter) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "counter", counter)

    def write(self, data: bytes) -> int | None:
        n = self._inner.write(data)
        self.counter.tx += len(data)
        return n  # type: ignore[no-any-return]

    def read(self, size: int = 1) -> bytes:
        data: bytes = self._inner.read(size)
        self.counter.rx += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Let only mpseal errors out: the edge of the transport (STYLE.md item 4)."""
    try:
        yield
    except mp_transport.TransportError as e:
        raise LinkError(
            f"{what}: {e}; check the cable and that no other program "
            "(mpremote, a terminal) holds the port"
        ) from None
    except serial.SerialException as e:
        raise LinkError(f"{what}: the serial line failed ({e}); reconnect") from None
    except OSError as e:
        raise LinkError(f"{what}: {e.strerror or e}; reconnect") from None


class RawRepl(MpremoteSerial):  # type: ignore[misc]
    """One serial line to a MicroPython REPL; :meth:`exec_raw` runs code on it."""

    serial: Any  # pyserial's object, then our CountingSerial around it
    use_raw_paste: bool  # mpremote's flag: False once the firmware showed it has no raw-paste

    def __init__(self, device: str, baudrate: int = 115200) -> None:
        self.wire = WireCounter()
        if not isinstance(device, str) or not device or "\n" in device:
            raise UsageError(f"not a serial port or URL: {device!r}")
        try:
            with translated(f"cannot open {device}"):
                super().__init__(device, baudrate=baudrate, timeout=0.02)
        except ValueError as e:  # pyserial: unknown URL scheme, bad settings
            raise UsageError(f"cannot open {device}: {e}") from None
        self.serial = CountingSerial(self.serial, self.wire)
        self._buf = bytearray()
        self.in_sync = False  # False: the next exec must (re-)enter the raw REPL
        self.closed = False

    # -- reading with deadlines, through a buffer ----------------------------------

    def _fill(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            self.in_sync = False
            raise LinkError(f"{what}: the device did not answer in time")
        waiting = self.serial.in_waiting
        self._buf += self.serial.read(max(1, min(waiting, 65536)))

    def _read_until(self, ending: bytes, deadline: float, limit: int, what: str) -> bytes:
        """Bytes up to and including ``ending``; at most ``limit`` before it."""
        start = 0
        while True:
            found = self._buf.find(ending, start)
            if found >= 0:
                end = found + len(ending)
                data = bytes(self._buf[:end])
                del self._buf[:end]
                return data
            if len(self._buf) > limit + len(ending):
                self.in_sync = False
                raise FormatError(f"{what}: the device sent more than {limit} bytes")
            start = max(0, len(self._buf) - len(ending) + 1)
            self._fill(deadline, what)

    def _read_exact(self, n: int, deadline: float, what: str) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline, what)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _drain(self, quiet: float, deadline: float) -> None:
        self._buf.clear()
        last = time.monotonic()
        while time.monotonic() - last < quiet and time.monotonic() < deadline:
            if self.serial.read(65536):
                last = time.monotonic()

    # -- the protocol -------------------------------------------------------------

    def enter(self, timeout: float = 10.0) -> None:
        """Interrupt whatever runs and enter the raw REPL, without a soft reset."""
        deadline = time.monotonic() + timeout
        with translated("cannot enter the raw REPL"):
            # ctrl-C twice stops a program; ctrl-B leaves an earlier raw REPL, which
            # frees its line buffer (it keeps the size of the largest exec so far).
            self.serial.write(b"\r\x03\x03\r\x02")
            self._drain(0.15, deadline)
            self.serial.write(b"\r\x01")
            self._read_until(BANNER, deadline, 64 * 1024, "entering the raw REPL")
            self._read_until(b">", deadline, 16, "entering the raw REPL")
            self.in_sync = True

    def soft_reset(self, timeout: float = 10.0) -> None:
        """Restart the interpreter (heap and globals gone, files kept), back in the raw REPL.

        Not on the unix port: there a soft reset ends the VM's process."""
        deadline = time.monotonic() + timeout
        if not self.in_sync:
            self.enter(timeout)
        with translated("soft-resetting the device"):
            self.in_sync = False
            self.serial.write(b"\x04")  # ctrl-D at the raw prompt with no code: soft reset
            self._read_until(b"soft reboot", deadline, 64 * 1024, "soft-resetting the device")
            self._drain(0.3, deadline)
        self.enter(max(0.5, deadline - time.monotonic()))

    def reenter(self, timeout: float = 10.0) -> None:
        """Leave and re-enter the raw REPL: on small boards this frees its line buffer."""
        self.in_sync = False
        self.enter(timeout)

    def exec_raw(self, code: bytes, timeout: float, out_max: int) -> tuple[bytes, bytes]:
        """Run ``code``; return (stdout, stderr). Leaves the device at the raw prompt."""
        if self.closed:
            raise LinkError("the connection to the device is closed")
        if not self.in_sync:
            self.enter(min(timeout, 10.0))
        deadline = time.monotonic() + timeout
        self.in_sync = False  # until this exec completes
        with translated("running code on the device"):
            self._send(code, deadline)
            return self._follow(deadline, out_max)

    def exec_echoed(
        self,
        code: bytes,
        lines: list[bytes],
        timeout: float,
        out_max: int,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[bytes, bytes]:
        """Run ``code``, which reads ``lines`` with input(); pace on input()'s echo.

        For firmware without raw-paste mode: never more than ``ECHO_WINDOW`` bytes are
        in flight, so the UART buffer cannot overflow, and each line's echo proves it
        arrived intact. ``progress(i)`` is called after line ``i`` was echoed.
        """
        if self.closed:
            raise LinkError("the connection to the device is closed")
        if not self.in_sync:
            self.enter(min(timeout, 10.0))
        deadline = time.monotonic() + timeout
        self.in_sync = False
        with translated("streaming data to the device"):
            self._send(code, deadline)
            for i, line in enumerate(lines):
                for at in range(0, len(line) + 1, ECHO_WINDOW):
                    piece = (line + b"\r")[at : at + ECHO_WINDOW]
                    self.serial.write(piece)
                    want = piece.replace(b"\r", b"\r\n")
                    echo = self._read_exact(len(want), deadline, "waiting for the echo")
                    if echo != want:
                        return self._ended_early(echo, out_max)
                if progress:
                    progress(i)
            return self._follow(deadline, out_max)

    def _ended_early(self, echo: bytes, out_max: int) -> tuple[bytes, bytes]:
        """The echo differs: the code ended (raised?) or bytes were lost. Which?"""
        self._buf[:0] = echo
        deadline = time.monotonic() + 2.0
        try:
            out, err = self._follow(deadline, out_max)
        except (LinkError, FormatError):
            raise LinkError(
                "the device's echo differs from what was sent: bytes were lost on the line; retry"
            ) from None
        self.in_sync = False  # lines we sent after it ended may sit in the raw REPL
        if not err:
            raise LinkError("the device stopped reading before all data was sent; retry")
        return out, err

    def _follow(self, deadline: float, out_max: int) -> tuple[bytes, bytes]:
        out = self._read_until(b"\x04", deadline, out_max, "reading the device's output")
        err = self._read_until(b"\x04", deadline, ERR_MAX, "reading the device's error")
        self._read_exact(1, deadline, "waiting for the raw REPL prompt")
        self.in_sync = True
        return out[:-1], err[:-1]

    def _send(self, code: bytes, deadline: float) -> None:
        if self.use_raw_paste:
            self.serial.write(b"\x05A\x01")
            reply = self._read_exact(2, deadline, "starting raw-paste mode")
            if reply == b"R\x01":
                self._paste(code, deadline)
                return
            if reply != b"R\x00":
                # old firmware: it took ctrl-E as code and ctrl-A reset the raw REPL
                self._read_until(BANNER[2:], deadline, 1024, "falling back to the raw REPL")
                self._read_until(b">", deadline, 16, "falling back to the raw REPL")
            self.use_raw_paste = False
        for i in range(0, len(code), PACE_BYTES):
            self.serial.write(code[i : i + PACE_BYTES])
            self.serial.flush()  # on a pty: until the other side has taken the bytes
            time.sleep(PACE_SECONDS)
        self.serial.write(b"\x04")
        if self._read_exact(2, deadline, "sending code") != b"OK":
            raise LinkError("the device did not accept the code; is it in the raw REPL?")

    def _paste(self, code: bytes, deadline: float) -> None:
        window = struct.unpack("<H", self._read_exact(2, deadline, "raw-paste window"))[0]
        remain = window
        i = 0
        while i < len(code):
            while remain == 0 or self._buf or self.serial.in_waiting:
                flag = self._read_exact(1, deadline, "raw-paste flow control")
                if flag == b"\x01":
                    remain += window
                elif flag == b"\x04":  # the device stopped the paste (e.g. MemoryError)
                    self.serial.write(b"\x04")
                    return
                else:
                    self.in_sync = False
                    raise LinkError(f"unexpected byte {flag!r} during raw-paste")
            piece = code[i : i + remain]
            self.serial.write(piece)
            remain -= len(piece)
            i += len(piece)
        self.serial.write(b"\x04")
        self._read_until(b"\x04", deadline, 1024, "ending raw-paste mode")

    def close(self) -> None:
        """Leave the raw REPL (best effort) and close the line. Idempotent."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError, serial.SerialException):
            if self.in_sync:
                self.serial.write(b"\r\x02")
                self.serial.flush()
        with contextlib.suppress(OSError, serial.SerialException, mp_transport.TransportError):
            super().close()
        with contextlib.suppress(OSError, serial.SerialException):
            self.serial.close()

    def drop(self) -> None:
        """Close the line abruptly, as a pulled cable would (for tests)."""
        self.closed = True
        with contextlib.suppress(OSError, serial.SerialException):
            self.serial.close()
