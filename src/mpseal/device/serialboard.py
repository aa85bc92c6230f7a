"""A board on a serial line (USB CDC, UART, a pty, ``socket://``): the :class:`Transport`.

Files travel as base64 (``binascii.a2b_base64`` on the device, or the pure-Python
decoder of ``runtime/mpseal_xfer.py`` where the firmware has no binascii), about
1.34 bytes on the wire per payload byte where ``mpremote fs cp``'s ``repr()``
costs about 2.9 for binary data. Chunks are sized from the device's free heap.

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
HELPER_GROUP = 900  # bytes of helper source per exec: a micro:bit compiles ~1 KB at once
SMALL_HEAP = 32 * 1024
RETRIES = 3
# How a call that lost bytes on an unpaced line fails before it acts; sent again.
DAMAGED = frozenset({"mpx_Damaged", "SyntaxError", "IndentationError", "NameError"})


def call(fn: str, *paths: str) -> str:
    """``fn('a', 'b', n)``: string arguments through repr(), ``n`` their total length."""
    args = ", ".join(repr(p) for p in paths)
    return f"{fn}({args}, {sum(len(p) for p in paths)})"


def helper_execs(source: str, group: int = HELPER_GROUP) -> list[str]:
    """The helper's top-level statements, without comments, packed into execs.

    The source is re-printed by ``ast.unparse`` (no comments, no docstrings survive)
    with one space per indentation level: less for the line and the device's heap.
    """
    tree = ast.parse(source)
    blocks = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        lines = ast.unparse(node).splitlines()
        blocks.append("\n".join(" " * ((len(ln) - len(ln.lstrip(" "))) // 4) + ln.lstrip(" ")
                                for ln in lines))
    execs: list[str] = []
    for block in blocks:
        if execs and len(execs[-1]) + len(block) + 1 <= group:
            execs[-1] += "\n" + block
        else:
            execs.append(block)
    return execs


def _helper_source() -> str:
    return (vm.runtime_dir() / HELPER).read_text()


class SerialTransport:
    """A MicroPython board behind one serial line; see :class:`mpseal.device.transport.Transport`."""

    def __init__(self, device: str, *, baudrate: int = 115200, limits: Limits = DEFAULT_LIMITS,
                 on_close: Callable[[], None] | None = None) -> None:
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
        check_path(path)
        caps = self.capabilities()
        size = self._call_value(call("mpx_size", path), f"reading {path}")
        if not isinstance(size, int) or size < 0:
            raise FormatError(f"the device reported a bad size for {path}: {size!r}")
        if size > limit:
            raise FormatError(f"{path} on the device is {size} bytes, over the {limit}-byte limit")
        n = 3 * 1024 if caps.mem_free > SMALL_HEAP else 96
        bound = 64 + 4 * size + 8 * (size // n + 2)  # repr() worst case, one line per chunk
        out = self._call(call(f"mpx_read({path!r}, {n}, {len(path)})"[:0] + "mpx_read", path)
                         .replace("mpx_read(", f"mpx_read({n}, ", 1), f"reading {path}",
                         out_max=bound, timeout=30.0 + size / 500)
        lines = out.split(b"\n")
        data = b"".join(self._decode_line(ln.strip(), caps) for ln in lines[1:] if ln.strip())
        if self._literal(lines[0], "the size") != size or len(data) != size:
            raise LinkError(f"reading {path}: got {len(data)} of {size} bytes; retry")
        return data

    def write_file(self, path: str, data: bytes, progress: Progress | None = None) -> None:
        check_path(path)
        tmp = check_path(path + ".tmp")
        data = bytes(data)
        caps = self.capabilities()
        chunk = self.chunk_size()
        self._call(f"mpx_open({tmp!r})", f"writing {tmp}")
        try:
            for off in range(0, len(data), chunk):
                piece = base64.b64encode(data[off:off + chunk])
                self._call(f"mpx_w({piece!r})", f"writing {tmp}", timeout=10.0 + chunk / 200)
                if progress:
                    progress(min(off + chunk, len(data)), len(data))
            expect = (len(data), self._digest(data, caps))
            stored = self._call_value("mpx_close()", f"writing {tmp}",
                                      timeout=10.0 + len(data) / 1000)
            if stored != expect:
                raise LinkError(f"{tmp} on the device is not what was sent "
                                f"({stored!r:.60} != {expect!r:.60}); retry")
        except DeviceError:
            self._cleanup(tmp)
            raise
        except LinkError:
            if self._repl.in_sync:  # the line still works: the data was damaged
                self._cleanup(tmp)
            raise
        final = self._call_value(f"mpx_commit({tmp!r}, {path!r})", f"renaming {tmp}",
                                 timeout=10.0 + len(data) / 500)
        if final != expect:
            raise LinkError(f"{path} on the device is not what was sent after the rename; retry")

    def listdir(self, path: str = "/") -> list[str]:
        check_folder(path)
        self.capabilities()
        names = self._call_value(f"mpx_ls({path!r})", f"listing {path}")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FormatError(f"the device's listing of {path} is not a list of names")
        return names

    def remove(self, path: str) -> None:
        check_path(path)
        self._call(f"import os\nos.remove({path!r})", f"removing {path}")

    def close(self) -> None:
        try:
            self._repl.close()
        finally:
            if self._on_close:
                hook, self._on_close = self._on_close, None
                hook()

    def __enter__(self) -> SerialTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- beyond the protocol -----------------------------------------------------------

    @property
    def wire(self) -> WireCounter:
        """Bytes that crossed the serial line so far (tx: to the device)."""
        return self._repl.wire

    def capabilities(self) -> Capabilities:
        """Load the helper into the REPL (once per connection) and probe the firmware."""
        if self._caps is None:
            for code in helper_execs(_helper_source()):
                self._run(code, 10.0, what="loading mpseal's transfer helper")
            raw = self._call_value("mpx_caps()", "probing the firmware")
            self._caps = self._parse_caps(raw)
        return self._caps

    def chunk_size(self) -> int:
        """Payload bytes per exec: small where the heap is small, a multiple of 3."""
        caps = self.capabilities()
        if caps.mem_free > SMALL_HEAP:
            return 3 * 4096 if caps.raw_paste else 3 * 1024
        return max(48, min(384, caps.mem_free // 14 // 48 * 48))

    def drop(self) -> None:
        """Close the line abruptly, as a pulled cable would (for tests of cut transfers)."""
        self._repl.drop()

    # -- internals -------------------------------------------------------------------

    def _run(self, code: str, timeout: float, what: str = "",
             out_max: int | None = None) -> bytes:
        limit = out_max if out_max is not None else self.limits.device_reply_max_length
        out, err = self._repl.exec_raw(code.encode(), timeout, limit)
        if err:
            raise device_error(err, what)
        return out

    def _call(self, code: str, what: str, timeout: float = 10.0,
              out_max: int | None = None) -> bytes:
        return self._run(code, timeout, what, out_max)

    def _call_value(self, code: str, what: str, timeout: float = 10.0) -> object:
        return self._literal(self._call(code, what, timeout), what)

    @staticmethod
    def _literal(out: bytes, what: str) -> object:
        text = out.decode("utf-8", "replace").strip()
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise FormatError(f"the device's reply for {what} is not a literal: "
                              f"{text[:60]!r}") from None

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

    def _cleanup(self, tmp: str) -> None:
        try:
            self._call(f"mpx_abort({tmp!r})", f"removing {tmp}")
        except (DeviceError, LinkError, FormatError):
            pass  # the original error is the one worth reporting

    def _parse_caps(self, raw: object) -> Capabilities:
        if not isinstance(raw, dict):
            raise FormatError("the device's capabilities are not a dict")
        try:
            version = tuple(int(v) for v in raw["version"] if isinstance(v, int))
            caps = Capabilities(
                version=version, platform=str(raw["platform"])[:40],
                binascii=bool(raw["binascii"]), hashlib=bool(raw["hashlib"]),
                rename=bool(raw["rename"]), mkdir=bool(raw["mkdir"]),
                mem_free=int(raw["mem_free"]), raw_paste=bool(self._repl.use_raw_paste))
        except (KeyError, TypeError, ValueError):
            raise FormatError("the device's capabilities lack a field or have a bad one") from None
        return caps


def helper_path() -> Path:
    """Where the device-side helper lives (shipped in ``mpseal/runtime``)."""
    return vm.runtime_dir() / HELPER
