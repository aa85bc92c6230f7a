"""Stock MicroPython v1.28.0 for the MPS2-AN385 (Cortex-M3) in QEMU, with exact counts.

QEMU runs with ``-icount shift=0``: the virtual clock advances exactly 1 ns per executed
instruction, so the firmware's ``time.ticks_us()`` reads instructions / 1000. (Checked
with an ``asm_thumb`` loop of ``sub; bne``: 10 M iterations read 20,001 us.) A figure in
instructions is ``ticks_diff * 1000``, exact to +-1000.

The board has no writable filesystem; :meth:`Mps2.put` serves modules (``.mpy`` from the
real mpy-cross, or source) from a VFS written in MicroPython in the board's RAM (files
written there stay in RAM), mounted at ``/ram`` and first on ``sys.path``. Talks raw REPL over QEMU's stdio.
"""

from __future__ import annotations

import base64
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

FIRMWARE_DIR = Path(os.environ.get("MPSEAL_FIRMWARE_DIR", "/work/shared/firmware"))
ELF = FIRMWARE_DIR / "micropython-v1.28.0" / "qemu-MPS2_AN385" / "firmware.elf"
ARCH = "armv7m"  # mpy-cross -march for this board's code emitter

_RAMFS = r"""
import sys, vfs, io
class _RamFS:
    def __init__(self):
        self.f = {}
    def mount(self, ro, mkfs):
        pass
    def umount(self):
        pass
    def chdir(self, p):
        pass
    def getcwd(self):
        return "/"
    def stat(self, p):
        p = p.strip("/")
        if p in self.f:
            return (0x8000, 0, 0, 0, 0, 0, len(self.f[p]), 0, 0, 0)
        if p == "":
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        raise OSError(2)
    def ilistdir(self, p):
        for k in self.f:
            yield (k, 0x8000, 0, len(self.f[k]))
    def open(self, p, mode):
        p = p.strip("/")
        if "w" in mode:
            return _RamFile(self.f, p)
        if p not in self.f:
            raise OSError(2)
        return io.BytesIO(self.f[p])
    def rename(self, a, b):
        self.f[b.strip("/")] = self.f.pop(a.strip("/"))
    def remove(self, p):
        del self.f[p.strip("/")]
class _RamFile:
    def __init__(self, files, name):
        self.files, self.name, self.data = files, name, bytearray()
    def write(self, b):
        self.data.extend(b)
        return len(b)
    def close(self):
        self.files[self.name] = bytes(self.data)
    def __enter__(self):
        return self
    def __exit__(self, *a):
        self.close()
_ramfs = _RamFS()
vfs.mount(_ramfs, "/ram")
sys.path.insert(0, "/ram")
"""


class QemuError(RuntimeError):
    pass


class Mps2:
    """One QEMU MPS2-AN385 process in the raw REPL; use as a context manager."""

    def __init__(self, timeout: float = 120.0) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.buf = b""

    def __enter__(self) -> Mps2:
        qemu = shutil.which("qemu-system-arm")
        if not qemu or not ELF.is_file():
            raise QemuError(f"need qemu-system-arm and {ELF}")
        self.proc = subprocess.Popen(
            [
                qemu,
                "-M",
                "mps2-an385",
                "-kernel",
                str(ELF),
                "-nographic",
                "-monitor",
                "none",
                "-serial",
                "stdio",
                "-semihosting",
                "-icount",
                "shift=0",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._until(b">>> ", 30)
        self._write(b"\x01")
        self._until(b"raw REPL; CTRL-B to exit\r\n>", 10)
        self.exec(_RAMFS)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()

    def _write(self, data: bytes) -> None:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _until(self, marker: bytes, timeout: float) -> bytes:
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while marker not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise QemuError(f"no {marker!r} within {timeout:.0f}s; got {self.buf[-300:]!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise QemuError(f"QEMU ended; got {self.buf[-300:]!r}")
                self.buf += chunk
        i = self.buf.index(marker)
        out, self.buf = self.buf[:i], self.buf[i + len(marker) :]
        return out

    def exec(self, code: str, timeout: float | None = None) -> str:
        """Run ``code`` in the raw REPL; its output, or QemuError with the traceback."""
        self._write(code.encode() + b"\x04")
        self._until(b"OK", 10)
        out = self._until(b"\x04", timeout or self.timeout)
        err = self._until(b"\x04>", 10)
        if err:
            raise QemuError(err.decode(errors="replace").strip())
        return out.decode(errors="replace")

    def put(self, files: dict[str, bytes]) -> None:
        """Serve ``name -> bytes`` from /ram (importable: /ram is first on sys.path)."""
        for name, data in files.items():
            self.exec(f"_ramfs.f[{name!r}] = bytearray()")
            for i in range(0, len(data), 2048):
                chunk = base64.b64encode(data[i : i + 2048]).decode()
                self.exec(
                    f"_ramfs.f[{name!r}].extend(__import__('binascii').a2b_base64({chunk!r}))"
                )
            self.exec(f"_ramfs.f[{name!r}] = bytes(_ramfs.f[{name!r}])")

    def instructions(self, setup: str, stmt: str, timeout: float | None = None) -> int:
        """Instructions (exact to +-1000) that ``stmt`` takes, after ``setup`` ran."""
        out = self.exec(
            setup + "\nimport time as _t, gc as _gc\n_gc.collect()\n"
            "_a = _t.ticks_us()\n" + stmt + "\n"
            "print('TICKS', _t.ticks_diff(_t.ticks_us(), _a))\n",
            timeout,
        )
        for line in out.splitlines():
            if line.startswith("TICKS "):
                return int(line.split()[1]) * 1000
        raise QemuError(f"no TICKS line in {out!r}")
