"""Run a command in a real pseudo-terminal, the way a person runs it in a terminal.

stdin, stdout and stderr are the slave side of one pty, so ``isatty()`` is true for all
three and rich draws its progress bars and hides the cursor exactly as it would for a user.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import MPSEAL

_ESCAPE = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07]*\x07|\r|\n")


def screen_text(raw: str) -> str:
    """The text left on the screen: lines erased by a transient progress bar are gone.

    A tiny terminal: new line, carriage return, cursor up (CSI n A) and erase line
    (CSI 2 K) are followed; colours and other escape sequences are dropped.
    """
    lines: list[str] = [""]
    row, col = 0, 0
    pos = 0
    for m in _ESCAPE.finditer(raw + "\r"):
        text = raw[pos : m.start()]
        pos = m.end()
        if text:
            line = lines[row]
            lines[row] = line[:col].ljust(col) + text + line[col + len(text) :]
            col += len(text)
        tok = m.group(0)
        if tok == "\n":
            row += 1
            col = 0
            if row == len(lines):
                lines.append("")
        elif tok == "\r":
            col = 0
        elif m.group(2) == "A":
            row = max(0, row - int(m.group(1) or 1))
        elif m.group(2) == "K":
            lines[row] = ""
    return "\n".join(ln.rstrip() for ln in lines)


@dataclass
class PtyRun:
    returncode: int
    raw: str  # everything the terminal received, escape sequences included

    @property
    def text(self) -> str:
        """What a person reads: escape sequences and carriage returns removed."""
        return screen_text(self.raw)

    @property
    def cursor_left_hidden(self) -> bool:
        return self.raw.rfind("\x1b[?25l") > self.raw.rfind("\x1b[?25h")


def run_in_pty(
    argv: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    columns: int = 120,
) -> PtyRun:
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("MPSEAL_PASSPHRASE", "COLUMNS", "NO_COLOR")
    }
    full_env.update({"TERM": "xterm-256color", **(env or {})})
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=full_env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{argv!r} did not finish in {timeout}s")
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave fd is closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                # Drain what is left, then stop.
                while select.select([master], [], [], 0.05)[0]:
                    try:
                        data = os.read(master, 65536)
                    except OSError:
                        data = b""
                    if not data:
                        break
                    chunks.append(data)
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        # Whatever the command left running in its session (a server, an emulator
        # started with '&') goes with it: the session is its own process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return PtyRun(rc, b"".join(chunks).decode("utf-8", "replace"))


def mpseal_in_pty(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> PtyRun:
    return run_in_pty([str(MPSEAL), *map(str, args)], cwd=cwd, env=env, timeout=timeout)
