"""The one interface mpseal uses to talk to a board, and the errors it raises.

Two real implementations speak it: :class:`mpseal.device.serialboard.SerialTransport`
(a board on a serial/USB line, on mpremote's transport) and the virtual board
(:func:`mpseal.device.simlink.connect`: the MicroPython unix VM with its flash
image, on a pty, through the very same ``SerialTransport``).

Errors, added under mpseal's tree (``mpseal.errors``)::

    TransportError
    ├── LinkError      the line failed: port gone, closed, timed out, protocol garbled
    └── DeviceError    code we ran on the device raised; carries its last traceback line
    FormatError        a device reply is not what the protocol allows (too long, not a literal)
    UsageError         a path we refuse to send (``../a``, quotes, newlines)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mpseal.errors import TransportError, UsageError
from mpseal.limits import DEFAULT_LIMITS

Progress = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` while a file is written."""

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
_ERRNO = re.compile(r"\[Errno (\d+)\]|^OSError: (-?\d+)\Z")
_MAX_LINE = 200


class LinkError(TransportError):
    """The serial line failed, was closed, timed out or garbled the protocol; reconnect."""


class DeviceError(TransportError):
    """Code run on the device raised an exception.

    ``exc_type`` is the exception's name on the device (``"OSError"``), ``errno`` its
    number when the device printed one, ``line`` the last line of its traceback.
    """

    def __init__(self, line: str, what: str = "") -> None:
        self.line = line
        self.exc_type = line.split(":", 1)[0].strip() if ":" in line else line.strip()
        found = _ERRNO.search(line)
        self.errno = int(found.group(1) or found.group(2)) if found else None
        where = f" while {what}" if what else ""
        # A small board (the micro:bit has ~8 KB of heap) is often left fragmented by an
        # earlier session (an audit, a REPL session): a soft reset frees its heap.
        hint = (
            "; the board is out of RAM: soft-reset it (Ctrl-D at its REPL, or replug "
            "it) and run the command again"
            if self.exc_type == "MemoryError"
            else ""
        )
        super().__init__(f"the device raised {line}{where}{hint}")


def device_error(stderr: bytes, what: str = "") -> DeviceError:
    """A :class:`DeviceError` from the traceback the device printed (untrusted text)."""
    text = stderr.decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else "an exception without a message"
    clean = "".join(c if c.isprintable() else "?" for c in last)
    if len(clean) > _MAX_LINE:
        clean = clean[:_MAX_LINE] + "..."
    return DeviceError(clean, what)


def check_path(path: str, *, limit: int = DEFAULT_LIMITS.file_name_max_length) -> str:
    """Return ``path`` if it is a plain device path, else raise :class:`UsageError`.

    Allowed: ``/``-separated parts of ``A-Z a-z 0-9 _ . -`` that do not start with
    ``.`` or ``-`` (so no ``..``, no hidden names), optionally one leading ``/``.
    Everything else (quotes, backslashes, newlines, control characters, non-ASCII,
    empty parts) is refused before anything reaches the device.
    """
    if not isinstance(path, str) or not path or len(path) > limit:
        raise UsageError(f"device path must be 1..{limit} characters: {path!r}")
    parts = path[1:].split("/") if path.startswith("/") else path.split("/")
    if not all(_PART.match(p) for p in parts):
        raise UsageError(
            f"refusing device path {path!r}: use '/'-separated names of letters, digits, "
            "'_', '.', '-', not starting with '.' or '-'"
        )
    return path


def check_folder(path: str) -> str:
    """Like :func:`check_path`, but ``/`` (the root) is allowed too."""
    return path if path == "/" else check_path(path)


@dataclass(frozen=True)
class Capabilities:
    """What the firmware on the other end has, as probed by ``mpx_caps()``."""

    version: tuple[int, ...]
    platform: str
    binascii: bool
    hashlib: bool
    rename: bool
    mkdir: bool
    mem_free: int
    raw_paste: bool

    @property
    def atomic_write(self) -> bool:
        """True when a file write is replaced in one step (``os.rename`` exists).

        Without it (the micro:bit) a write is still never left half-done under
        its final name by a cut *during the transfer*, but the final device-side
        copy from the temporary file is not atomic.
        """
        return self.rename


class Transport(Protocol):
    """A board to run code on and to move files to and from."""

    def exec(self, code: str, timeout: float = 10.0) -> str:
        """Run ``code`` in the raw REPL; return what it printed.

        Raises :class:`DeviceError` if it raised on the device.
        """
        ...

    def eval(self, expr: str, timeout: float = 10.0) -> object:
        """Evaluate ``expr`` on the device; the repr() it prints is parsed as a literal."""
        ...

    def read_file(self, path: str, limit: int) -> bytes:
        """The content of ``path``; :class:`mpseal.errors.FormatError` if over ``limit``."""
        ...

    def write_file(self, path: str, data: bytes, progress: Progress | None = None) -> None:
        """Write ``path + ".tmp"``, verify it, then rename it over ``path``."""
        ...

    def listdir(self, path: str = "/") -> list[str]:
        """Names in the folder ``path``."""
        ...

    def remove(self, path: str) -> None:
        """Delete the file ``path``."""
        ...

    def close(self) -> None:
        """Leave the raw REPL and release the line (and the board, if we started it)."""
        ...
