"""First contact with a board's console: is there a REPL on this line, and what does it take?

Before any protocol, :func:`check_console` does what a person at a terminal would:
listen to what the board prints on its own, press Enter, then Ctrl-C (twice), then
Ctrl-B (leaves a raw REPL another tool left open), each with a deadline, and at a
prompt press Ctrl-A to see whether the raw REPL (what mpremote and mpseal use)
answers. What it saw is kept as evidence (bounded, printable).

A board locked down by the boot guard (``field``/``sealed``: Ctrl-C ignored, the app
never returns) shows no prompt: the check then says ``"none"`` instead of failing.
Only a line that cannot be opened at all raises (:class:`LinkError`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import serial

from mpseal.device.rawrepl import translated
from mpseal.errors import UsageError

PROMPT = b">>> "
RAW_BANNER = b"raw REPL; CTRL-B to exit"
KEEP = 4096  # bytes of output kept per step (the newest)


@dataclass(frozen=True)
class Step:
    sent: bytes  # b"" for listening
    seen: bytes  # what came back (the last KEEP bytes)
    seconds: float


@dataclass(frozen=True)
class ConsoleCheck:
    """What the line showed. ``prompt``: ``"prompt"`` (the REPL was waiting),
    ``"interrupted"`` (Ctrl-C stopped a running program), ``"raw"`` (a raw REPL was open;
    Ctrl-B left it) or ``"none"`` (no prompt at all). ``raw``: ``"banner"`` (Ctrl-A gave
    the raw REPL), ``"no banner"`` or ``"none"`` (not tried: no prompt)."""

    prompt: str
    raw: str
    steps: tuple[Step, ...] = field(default=())

    @property
    def reachable(self) -> bool:
        return self.prompt != "none"

    @property
    def unprompted(self) -> bytes:
        """What the board printed before any key was pressed."""
        return self.steps[0].seen if self.steps and not self.steps[0].sent else b""

    @property
    def output(self) -> bytes:
        return b"".join(s.seen for s in self.steps)


@dataclass(frozen=True)
class Timing:
    settle: float = 0.4  # silence that ends the listening
    listen_max: float = 3.0  # listen at most this long (a chatty app)
    enter: float = 1.0  # after Enter
    ctrl_c: float = 2.0  # after Ctrl-C
    ctrl_b: float = 1.0  # after Ctrl-B
    raw: float = 2.0  # after Ctrl-A


DEFAULT_TIMING = Timing()


class _Line:
    def __init__(self, port: str, baudrate: int) -> None:
        if not isinstance(port, str) or not port or "\n" in port:
            raise UsageError(f"not a serial port or URL: {port!r}")
        try:
            with translated(f"cannot open {port}"):
                self.ser: Any = serial.serial_for_url(port, baudrate=baudrate, timeout=0.05)
        except ValueError as e:  # pyserial: unknown URL scheme, bad settings
            raise UsageError(f"cannot open {port}: {e}") from None

    def send(self, data: bytes) -> None:
        with translated("writing to the board"):
            self.ser.write(data)
            self.ser.flush()

    def read_for(
        self, seconds: float, until: bytes | None = None, quiet: float | None = None
    ) -> bytes:
        """Read for ``seconds``, or until ``until`` appears, or ``quiet`` seconds of silence."""
        got = bytearray()
        start = last = time.monotonic()
        with translated("reading from the board"):
            while True:
                now = time.monotonic()
                if now - start >= seconds or (quiet is not None and now - last >= quiet):
                    break
                chunk = self.ser.read(max(1, min(self.ser.in_waiting, 65536)))
                if chunk:
                    last = time.monotonic()
                    got += chunk
                    del got[:-KEEP]
                    if until is not None and until in got:
                        break
        return bytes(got)

    def close(self) -> None:
        try:
            self.ser.close()
        except (OSError, serial.SerialException):
            pass


def check_console(
    port: str, *, baudrate: int = 115200, timing: Timing = DEFAULT_TIMING
) -> ConsoleCheck:
    """Look for a REPL on ``port``; never raises for a board that does not answer."""
    line = _Line(port, baudrate)
    steps: list[Step] = []

    def step(
        sent: bytes, seconds: float, until: bytes | None = None, quiet: float | None = None
    ) -> bytes:
        t0 = time.monotonic()
        if sent:
            line.send(sent)
        seen = line.read_for(seconds, until, quiet)
        steps.append(Step(sent, seen, round(time.monotonic() - t0, 2)))
        return seen

    try:
        step(b"", timing.listen_max, quiet=timing.settle)
        prompt = "none"
        if PROMPT in step(b"\r", timing.enter, PROMPT):
            prompt = "prompt"
        elif PROMPT in step(b"\x03\x03", timing.ctrl_c, PROMPT):
            prompt = "interrupted"
        elif PROMPT in step(b"\x02", timing.ctrl_b, PROMPT):
            prompt = "raw"
        raw = "none"
        if prompt != "none":
            seen = step(b"\x01", timing.raw, RAW_BANNER)
            raw = "banner" if RAW_BANNER in seen else "no banner"
            step(b"\x02", timing.ctrl_b, PROMPT)  # back to the friendly REPL
        return ConsoleCheck(prompt, raw, tuple(steps))
    finally:
        line.close()
