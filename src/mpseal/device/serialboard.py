"""A board on a serial line (USB CDC, UART, a pty, ``socket://``): the :class:`Transport`.

Files travel as base64 (``binascii.a2b_base64`` on the device, or the pure-Python
decoder of ``runtime/mpseal_xfer.py`` where the firmware has no binascii), about
1.34 bytes on the wire per payload byte where ``mpremote fs cp``'s ``repr()``
costs about 2.9 for binary data; a chunk whose ``repr()`` is shorter (text) goes
as a literal. Two ways to move them, chosen by what the firmware has:

- raw-paste mode (MicroPython >= 1.14): flow controlled; one exec per 12 KB chunk.
- plain raw REPL only (older firmware, e.g. the micro:bit's 1.9): no flow control
  and a UART that drops bytes under bursts, so one exec reads 64-character base64
  lines with ``input()`` and the host sends each only after the previous one's
  echo came back intact (``RawRepl.exec_echoed``).

A write goes to ``path + ".tmp"``, is read back on the device and checked against
size and hash (sha256, or Adler-32 without hashlib), then renamed over ``path``.
"""

from __future__ import annotations

import ast
import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Self

from mpseal.device import vm
from mpseal.device.rawrepl import RawRepl, WireCounter
from mpseal.device.transport import (
    Capabilities,
    DeviceError,
    LinkError,
    Progress,
    check_folder,
    check_path,
    device_error,
)
from mpseal.errors import FormatError, UsageError
from mpseal.limits import DEFAULT_LIMITS, Limits

HELPER = "mpseal_xfer.py"
HELPER_GROUP = 400  # bytes of helper source per exec: a micro:bit has ~8 KB of heap
SMALL_HEAP = 32 * 1024
RETRIES = 3
# Distinct short lines sent after the data in echo mode: they push the long data
# lines out of input()'s 8-line history, which would otherwise fragment a 10 KB heap.
HISTORY_FLUSH = [str(i).encode() for i in range(8)]
# How a call that lost bytes on an unpaced line fails before it acts; sent again.
DAMAGED = frozenset({"mpx_Damaged", "SyntaxError", "IndentationError", "NameError"})


def call(fn: str, *args: str | int) -> str:
    """``fn('a', 'b', n)``: arguments through repr(), ``n`` the total length of the strings."""
    n = sum(len(a) for a in args if isinstance(a, str))
    return f"{fn}({', '.join(repr(a) for a in args)}, {n})"


def helper_execs(source: str, group: int = HELPER_GROUP) -> list[str]:
    """The helper's top-level statements, without comments, packed into execs.

    The source is re-printed by ``ast.unparse`` (no comments, no docstrings survive)
    with one space per indentation level: less for the line and the device's heap.
    Each exec checks the length of its code before running it.
    """
    tree = ast.parse(source)
    blocks = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        lines = ast.unparse(node).splitlines()
        blocks.append(
            "\n".join(" " * ((len(ln) - len(ln.lstrip(" "))) // 4) + ln.lstrip(" ") for ln in lines)
        )
    groups: list[str] = []
    for block in blocks:
        if groups and len(groups[-1]) + len(block) + 1 <= group:
            groups[-1] += "\n" + block
        else:
            groups.append(block)
    # Sent as a string whose length is checked before it runs: on a line that drops
    # bytes, a damaged definition must not load as different but valid code.
    return [
        f"_mpx_src={g!r}\nif len(_mpx_src)!={len(g)}:raise SyntaxError('lost bytes')\n"
        "exec(_mpx_src)\ndel _mpx_src"
        for g in groups
    ]


def _helper_source() -> str:
    return (vm.runtime_dir() / HELPER).read_text()


class SerialTransport:
    """A MicroPython board behind one serial line; see :class:`mpseal.device.transport.Transport`."""

    def __init__(
        self,
        device: str,
        *,
        baudrate: int = 115200,
        limits: Limits = DEFAULT_LIMITS,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.device = device
        self.limits = limits
        self._on_close = on_close
        self._repl = RawRepl(device, baudrate)
        self._caps: Capabilities | None = None

    # -- the Transport protocol ------------------------------------------------------

    def exec(self, code: str, timeout: float = 10.0) -> str:
        out = self._run(code, timeout)
        return out.decode("utf-8", "replace")

    def eval(self, expr: str, timeout: float = 10.0) -> object:
        return self._literal(self._run(f"print(repr({expr}))", timeout), "the value")

    def read_file(self, path: str, limit: int) -> bytes:
        path = self._device_path(path)
        caps = self.capabilities()
        size = self._call_value(call("mpx_size", path), f"reading {path}")
        if not isinstance(size, int) or size < 0:
            raise FormatError(f"the device reported a bad size for {path}: {size!r}")
        if size > limit:
            raise FormatError(f"{path} on the device is {size} bytes, over the {limit}-byte limit")
        n = 3 * 1024 if caps.mem_free > SMALL_HEAP else 96
        bound = 200 + 4 * size + 8 * (size // n + 2)  # repr() worst case, one line per chunk
        out = self._call(
            call("mpx_read", path, n), f"reading {path}", out_max=bound, timeout=30.0 + size / 500
        )
        lines = [ln.strip() for ln in out.split(b"\n") if ln.strip()]
        if len(lines) < 2:
            raise FormatError(f"the device's reply for {path} is truncated")
        head, digest = self._literal(lines[0], "the size"), self._literal(lines[-1], "the hash")
        data = b"".join(self._decode_line(ln, caps) for ln in lines[1:-1])
        if head != size or digest != (size, self._digest(data, caps)):
            raise LinkError(f"reading {path}: the data does not match its size and hash; retry")
        return data

    def write_file(self, path: str, data: bytes, progress: Progress | None = None) -> None:
        path = self._device_path(path)
        tmp = check_path(path + ".tmp")
        data = bytes(data)
        caps = self.capabilities()
        chunk = self.chunk_size()
        expect = (len(data), self._digest(data, caps))
        self._call(call("mpx_open", tmp), f"writing {tmp}")
        try:
            if caps.raw_paste:
                self._send_chunks(data, chunk, tmp, progress)
            else:
                self._send_lines(data, chunk, tmp, progress)
            stored = self._call_value(
                "mpx_close()", f"writing {tmp}", timeout=10.0 + len(data) / 500
            )
            if stored != expect:
                raise LinkError(f"{tmp} on the device is not what was sent; retry")
        except (DeviceError, LinkError):
            if not self._repl.closed:
                self._cleanup(tmp)
            raise
        final = self._call_value(
            call("mpx_commit", tmp, path),
            f"renaming {tmp} to {path}",
            timeout=10.0 + len(data) / 250,
        )
        if final != expect:
            raise LinkError(f"{path} on the device is not what was sent after the rename; retry")

    def listdir(self, path: str = "/") -> list[str]:
        check_folder(path)
        self.capabilities()
        names = self._call_value(call("mpx_ls", path), f"listing {path}")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FormatError(f"the device's listing of {path} is not a list of names")
        return names

    def remove(self, path: str) -> None:
        path = self._device_path(path)
        self._call(call("mpx_rm", path), f"removing {path}")

    def close(self) -> None:
        try:
            self._repl.close()
        finally:
            if self._on_close:
                hook, self._on_close = self._on_close, None
                hook()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- beyond the protocol -----------------------------------------------------------

    @property
    def wire(self) -> WireCounter:
        """Bytes that crossed the serial line so far (tx: to the device)."""
        return self._repl.wire

    def capabilities(self) -> Capabilities:
        """Load the helper into the REPL (unless this boot has it) and probe the firmware."""
        if self._caps is None:
            execs = helper_execs(_helper_source())
            ident = hashlib.sha256("\0".join(execs).encode()).hexdigest()[:16]
            if (
                self._call_value(
                    "print(repr(globals().get('mpx_id')))", "looking for the transfer helper"
                )
                == ident
            ):
                self._call("mpx_reset()", "resetting the transfer helper")
            else:
                for code in execs:
                    self._call(code, "loading mpseal's transfer helper")
                self._call(f"mpx_id = {ident!r}", "loading mpseal's transfer helper")
                self._repl.reenter()  # frees the raw REPL's buffer, grown by the long execs
            raw = self._call_value("print(repr(mpx_c))", "probing the firmware")
            self._caps = self._parse_caps(raw)
        return self._caps

    def chunk_size(self) -> int:
        """Payload bytes per exec (raw-paste) or per line (echo mode); a multiple of 3."""
        caps = self.capabilities()
        if not caps.raw_paste:
            # 64-character lines: input() keeps the last 8 lines in its history
            return 48
        return 3 * 4096 if caps.mem_free > SMALL_HEAP else 3 * 64

    def soft_reset(self) -> None:
        """Restart the board's interpreter: frees a fragmented heap (small boards); files stay.
        The transfer helper is loaded again on the next file operation."""
        self._repl.soft_reset()
        self._caps = None

    def drop(self) -> None:
        """Close the line abruptly, as a pulled cable would (for tests of cut transfers)."""
        self._repl.drop()

    # -- internals -------------------------------------------------------------------

    def _device_path(self, path: str) -> str:
        """``path`` checked; on a flat filesystem (the micro:bit) without its leading '/'."""
        check_path(path)
        caps = self.capabilities()
        if caps.mkdir:
            return path
        flat = path.lstrip("/")
        if "/" in flat:
            raise UsageError(
                f"{path!r}: the filesystem of this board ({caps.platform}) has no "
                "folders; use a plain file name"
            )
        return flat

    def _run(self, code: str, timeout: float, what: str = "", out_max: int | None = None) -> bytes:
        limit = out_max if out_max is not None else self.limits.device_reply_max_length
        out, err = self._repl.exec_raw(code.encode(), timeout, limit)
        if err:
            raise device_error(err, what)
        return out

    def _call(
        self, code: str, what: str, timeout: float = 10.0, out_max: int | None = None
    ) -> bytes:
        """Run a call of the helper; send it again if it lost bytes on the way."""
        for attempt in range(RETRIES + 1):
            try:
                return self._run(code, timeout, what, out_max)
            except DeviceError as e:
                if e.exc_type not in DAMAGED or attempt == RETRIES:
                    raise
        raise AssertionError("unreachable")

    def _call_value(self, code: str, what: str, timeout: float = 10.0) -> object:
        return self._literal(self._call(code, what, timeout), what)

    @staticmethod
    def _literal(out: bytes, what: str) -> object:
        text = out.decode("utf-8", "replace").strip()
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise FormatError(
                f"the device's reply for {what} is not a literal: {text[:60]!r}"
            ) from None

    @staticmethod
    def _decode_line(line: bytes, caps: Capabilities) -> bytes:
        if caps.binascii:
            try:
                return base64.b64decode(line, validate=True)
            except (binascii.Error, ValueError):
                raise FormatError("the device sent a line that is not base64") from None
        value = SerialTransport._literal(line, "a file chunk")
        if not isinstance(value, bytes):
            raise FormatError("the device sent a file chunk that is not bytes")
        return value

    @staticmethod
    def _digest(data: bytes, caps: Capabilities) -> bytes | int:
        return hashlib.sha256(data).digest() if caps.hashlib else zlib.adler32(data)

    def _send_chunks(self, data: bytes, chunk: int, tmp: str, progress: Progress | None) -> None:
        """Raw-paste mode (flow controlled): one exec per chunk, base64 or a literal.

        Binary data goes as base64 (~1.34x); text as a bytes literal when its repr()
        is shorter (~1.05x for source code).
        """
        for off in range(0, len(data), chunk):
            piece = data[off : off + chunk]
            encoded, literal = base64.b64encode(piece), repr(piece)
            code = (
                f"mpx_w({encoded!r}, {len(piece)})"
                if len(encoded) + 3 < len(literal)
                else f"mpx_wr({literal}, {len(piece)})"
            )
            self._call(code, f"writing {tmp}", timeout=10.0 + chunk / 100)
            if progress:
                progress(off + len(piece), len(data))

    def _send_lines(self, data: bytes, chunk: int, tmp: str, progress: Progress | None) -> None:
        """Plain raw REPL: one ``mpx_recv`` exec reads base64 lines, paced on their echo."""
        lines = [base64.b64encode(data[off : off + chunk]) for off in range(0, len(data), chunk)]
        lines += HISTORY_FLUSH

        def line_done(i: int) -> None:
            if progress and i * chunk < len(data):
                progress(min((i + 1) * chunk, len(data)), len(data))

        _, err = self._repl.exec_echoed(
            f"mpx_recv({len(data)}, {len(HISTORY_FLUSH)})".encode(),
            lines,
            30.0 + len(data) / 200,
            self.limits.device_reply_max_length,
            line_done,
        )
        if err:
            raise device_error(err, f"writing {tmp}")

    def _cleanup(self, tmp: str) -> None:
        try:
            self._call(call("mpx_abort", tmp), f"removing {tmp}")
        except (DeviceError, LinkError, FormatError):
            pass  # the original error is the one worth reporting

    def _parse_caps(self, raw: object) -> Capabilities:
        if not (
            isinstance(raw, tuple)
            and len(raw) == 7
            and isinstance(raw[0], tuple)
            and isinstance(raw[1], str)
            and isinstance(raw[6], int)
        ):
            raise FormatError(f"the device's capabilities are malformed: {raw!r:.80}")
        version, platform, b64, sha, rename, mkdir, mem_free = raw
        return Capabilities(
            version=tuple(v for v in version if isinstance(v, int)),
            platform=platform[:40],
            binascii=b64 is True,
            hashlib=sha is True,
            rename=rename is True,
            mkdir=mkdir is True,
            mem_free=mem_free,
            raw_paste=bool(self._repl.use_raw_paste),
        )


def helper_path() -> Path:
    """Where the device-side helper lives (shipped in ``mpseal/runtime``)."""
    return vm.runtime_dir() / HELPER
