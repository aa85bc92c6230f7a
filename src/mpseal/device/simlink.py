"""The virtual board on a serial line: its VM on a pty, reached by the serial transport.

``micropython -i runtime/simrepl.py FLASH.img`` mounts the flash image at ``/`` and
drops into the REPL on a pty. pyserial needs a path to open, and only the *slave*
end of a pty has one, so the VM gets the slave of one pty and the host the slave
of a second; a thread relays the two master ends. That relay is also the power
switch: :meth:`SimLink.kill` cuts the VM off mid-operation, as unplugging a board
would, and the flash image keeps whatever littlefs had committed; and the meter:
it counts the bytes each way, whichever program (mpseal, ``mpremote``) talks.

A soft reset ends the unix port's process, so the transport enters the raw REPL
without one (like ``mpremote resume``).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import tty
from pathlib import Path

from mpseal.device import vm
from mpseal.device.serialboard import SerialTransport
from mpseal.device.sim import VirtualBoard
from mpseal.errors import ToolError
from mpseal.limits import DEFAULT_LIMITS, Limits

BANNER = b">>> "
START_TIMEOUT = 10.0


class SimLink:
    """A running virtual board and the pty path (:attr:`path`) to open it on."""

    def __init__(self, flash: Path, heapsize: str | None = None,
                 timeout: float = START_TIMEOUT) -> None:
        self._ready = threading.Event()
        self.to_board = 0  # bytes relayed from the host to the VM (what a UART would carry)
        self.from_board = 0
        self._seen = bytearray()  # the VM's first output, to explain a failed start
        vm_master, vm_slave = os.openpty()
        host_master, host_slave = os.openpty()
        tty.setraw(vm_slave)
        tty.setraw(host_slave)
        self._fds = (vm_master, host_master)
        self._host_slave = host_slave  # kept open: with no slave open, the master reads EIO
        self.path = os.ttyname(host_slave)
        cmd = [str(vm.find_micropython())]
        if heapsize:
            cmd += ["-X", f"heapsize={heapsize}"]
        cmd += ["-i", str(vm.runtime_dir() / "simrepl.py"), str(flash)]
        try:
            self.proc = subprocess.Popen(cmd, stdin=vm_slave, stdout=vm_slave, stderr=vm_slave,
                                         cwd=vm.runtime_dir(), close_fds=True,
                                         start_new_session=True)
        except OSError as e:
            self._close_fds()
            raise ToolError(f"cannot start the MicroPython VM: {e.strerror}") from None
        finally:
            os.close(vm_slave)
        self._thread = threading.Thread(target=self._relay, name="simlink-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            seen = self._seen.decode("utf-8", "replace").strip().splitlines()[-1:] or ["nothing"]
            self.close()
            raise ToolError(f"the virtual board did not reach its REPL: {seen[0][:200]}")

    def _relay(self) -> None:
        vm_master, host_master = self._fds
        peer = {vm_master: host_master, host_master: vm_master}
        try:
            while True:
                ready, _, _ = select.select(list(peer), [], [], 0.2)
                for fd in ready:
                    data = os.read(fd, 65536)
                    if not data:
                        return
                    if fd == vm_master:
                        self.from_board += len(data)
                        if not self._ready.is_set():
                            self._seen += data
                            if BANNER in self._seen:
                                self._ready.set()
                    else:
                        self.to_board += len(data)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(peer[fd], view):]
        except (OSError, ValueError):
            return  # the VM died (EIO) or close() closed the fds
        finally:
            self._close_fds()  # the host's serial line sees a hang-up

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, (-1, -1)
        for fd in (*fds, self._host_slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._host_slave = -1

    def kill(self) -> None:
        """Cut the power: the VM stops at once, mid-write if it was writing."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._thread.join(timeout=5)

    def close(self) -> None:
        """Stop the VM (littlefs has committed every closed file) and the relay."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._thread.join(timeout=5)
        self._close_fds()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def connect(board: VirtualBoard, *, limits: Limits = DEFAULT_LIMITS,
            timeout: float = START_TIMEOUT) -> tuple[SerialTransport, SimLink]:
    """Start ``board``'s VM and open the serial transport on it.

    Closing the transport stops the VM; ``link.kill()`` cuts it off abruptly.
    """
    link = SimLink(board.flash, board.info.heapsize, timeout)
    try:
        transport = SerialTransport(link.path, limits=limits, on_close=link.close)
    except BaseException:
        link.close()
        raise
    return transport, link
