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

With ``boot=True`` the board is powered on instead of dropped at a bare REPL: the
VM runs ``boot.py`` and ``main.py`` from the flash (``simrepl.py FLASH boot``), and
the link does what a board does when that ends: a reset (exit 17, the guard's
``machine.reset()``) boots again, a locked idle (exit 18) leaves the line silent,
and a ``main.py`` that returns or raises hands the line to the REPL (a second VM
run on the same flash and the same pty; a Ctrl-D there is a soft reset: boot
again). The line stays open across these, as a USB-UART bridge does. One thing it
cannot model: the unix VM takes Ctrl-C as a signal from its terminal, and its pty
is raw, so no Ctrl-C reaches code that runs; a running app behaves as one that
ignores Ctrl-C (on a real board only ``kbd_intr(-1)`` does that).
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
from mpseal.device.sim import EXIT_IDLE, EXIT_RESET, VirtualBoard
from mpseal.errors import ToolError
from mpseal.limits import DEFAULT_LIMITS, Limits

BANNER = b">>> "
START_TIMEOUT = 10.0
BOOT_WAIT = 2.0  # boot mode: wait this long for the board's first output (a silent app)
MAX_RESETS = 20  # boot mode: a board that keeps resetting is left off after this many
POWER_ON_KEEP = 8192  # boot mode: bytes of the board's first output kept (power_on_output)


class SimLink:
    """A running virtual board and the pty path (:attr:`path`) to open it on."""

    def __init__(
        self,
        flash: Path,
        heapsize: str | None = None,
        timeout: float = START_TIMEOUT,
        *,
        boot: bool = False,
        firmware: str = "",
        eio: int = 0,
    ) -> None:
        self._firmware = firmware  # runtime/simfirmware.py SPEC, boot mode
        self._eio = eio  # boot mode: the flash fails (EIO) from that block operation on
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.to_board = 0  # bytes relayed from the host to the VM (what a UART would carry)
        self.from_board = 0
        self.boot = boot
        self.runs: list[tuple[str, int]] = []  # boot mode: ("boot"|"repl", exit code) so far
        self._stopping = False  # no more reboots
        self._closing = False  # the relay ends
        self._seen = bytearray()  # the VM's first output, to explain a failed start
        self._flash = Path(flash).absolute()  # the VM runs in the runtime folder
        self._heapsize = heapsize
        vm_master, vm_slave = os.openpty()
        host_master, host_slave = os.openpty()
        tty.setraw(vm_slave)
        tty.setraw(host_slave)
        self._fds = (vm_master, host_master)
        self._host_slave = host_slave  # kept open: with no slave open, the master reads EIO
        # Boot mode keeps the VM's end open too: the line survives the VM's resets.
        self._vm_slave = vm_slave if boot else -1
        if boot:
            os.set_blocking(vm_master, False)
        self.path = os.ttyname(host_slave)
        try:
            self.proc = self._spawn(vm_slave, "boot" if boot else "repl")
        except BaseException:
            if not boot:
                os.close(vm_slave)
            self._close_fds()
            raise
        if not boot:
            os.close(vm_slave)
        self._thread = threading.Thread(target=self._relay, name="simlink-relay", daemon=True)
        self._thread.start()
        if boot:
            self._ready.wait(min(timeout, BOOT_WAIT))  # a silent board is not an error
            return
        if not self._ready.wait(timeout):
            seen = self._seen.decode("utf-8", "replace").strip().splitlines()[-1:] or ["nothing"]
            self.close()
            raise ToolError(f"the virtual board did not reach its REPL: {seen[0][:200]}")

    def _spawn(self, vm_slave: int, mode: str) -> subprocess.Popen[bytes]:
        """Start the VM on the pty: at its REPL, or running the board's boot sequence."""
        cmd = [str(vm.find_micropython())]
        if self._heapsize:
            cmd += ["-X", f"heapsize={self._heapsize}"]
        script = str(vm.runtime_dir() / "simrepl.py")
        firmware = ["--firmware", self._firmware] if self._firmware else []
        firmware += ["--eio", str(self._eio)] if self._eio and mode == "boot" else []
        cmd += (
            [script, str(self._flash), "boot", *firmware]
            if mode == "boot"
            else ["-i", script, str(self._flash)]
        )
        self._mode = mode
        try:
            return subprocess.Popen(
                cmd,
                stdin=vm_slave,
                stdout=vm_slave,
                stderr=vm_slave,
                cwd=vm.runtime_dir(),
                env=vm.vm_env(),
                close_fds=True,
                start_new_session=True,
            )
        except OSError as e:
            raise ToolError(f"cannot start the MicroPython VM: {e.strerror}") from None

    def _next_run(self) -> None:
        """Boot mode: the VM ended; do what the board would do next (under the lock)."""
        code = self.proc.returncode
        self.runs.append((self._mode, code))
        if self._stopping or self._vm_slave < 0:
            return
        if self._mode == "boot" and code == EXIT_IDLE:
            return  # locked idle: the board stays silent
        resets = sum(1 for m, c in self.runs if m == "boot" and c == EXIT_RESET)
        if self._mode == "boot" and code == EXIT_RESET and resets > MAX_RESETS:
            return
        mode = "boot" if (self._mode == "repl" or code == EXIT_RESET) else "repl"
        try:
            self.proc = self._spawn(self._vm_slave, mode)
        except ToolError:
            return

    def _relay(self) -> None:
        vm_master, host_master = self._fds
        peer = {vm_master: host_master, host_master: vm_master}
        try:
            while True:
                ready, _, _ = select.select(list(peer), [], [], 0.2)
                if self._closing:
                    return
                if self.boot:
                    self._supervise()
                for fd in ready:
                    data = os.read(fd, 65536)
                    if not data:
                        return
                    if fd == vm_master:
                        self.from_board += len(data)
                        if not self._ready.is_set() or (
                            self.boot and len(self._seen) < POWER_ON_KEEP
                        ):
                            self._seen += data
                            if BANNER in self._seen or self.boot:
                                self._ready.set()
                    else:
                        self.to_board += len(data)
                    view = memoryview(data)
                    while view:
                        try:
                            view = view[os.write(peer[fd], view) :]
                        except BlockingIOError:
                            break  # boot mode: nothing reads the board's input; it overflows
        except (OSError, ValueError):
            return  # the VM died (EIO) or close() closed the fds
        finally:
            self._close_fds()  # the host's serial line sees a hang-up

    def _supervise(self) -> None:
        with self._lock:
            if self.proc.returncode is None and self.proc.poll() is not None:
                self._next_run()

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, (-1, -1)
        for fd in (*fds, self._host_slave, self._vm_slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._host_slave = -1
        self._vm_slave = -1

    def kill(self) -> None:
        """Cut the power: the VM stops at once, mid-write if it was writing.

        In boot mode the board stays off (no reboot) and the line stays open, silent.
        """
        with self._lock:
            self._stopping = True
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if not self.boot:
            self._thread.join(timeout=5)

    def close(self) -> None:
        """Stop the VM (littlefs has committed every closed file) and the relay."""
        with self._lock:
            self._stopping = True
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        self._closing = True
        self._thread.join(timeout=5)
        self._close_fds()

    @property
    def power_on_output(self) -> bytes:
        """Boot mode: the first bytes the board printed after power-on (its boot log),
        which a program that opens the line later would have missed."""
        return bytes(self._seen[:POWER_ON_KEEP])

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def connect(
    board: VirtualBoard,
    *,
    limits: Limits = DEFAULT_LIMITS,
    timeout: float = START_TIMEOUT,
    boot: bool = False,
) -> tuple[SerialTransport, SimLink]:
    """Start ``board``'s VM and open the serial transport on it.

    ``boot=True`` powers the board on (boot.py, main.py) instead of starting at a bare
    REPL; on a locked-down board the transport then finds no REPL (:class:`LinkError`).
    Closing the transport stops the VM; ``link.kill()`` cuts it off abruptly.
    """
    link = SimLink(board.flash, board.info.heapsize, timeout, boot=boot)
    try:
        transport = SerialTransport(link.path, limits=limits, on_close=link.close)
    except BaseException:
        link.close()
        raise
    return transport, link
