"""``mpseal sim`` on a virtual Raspberry Pi Pico (device/pico.py): everything over USB serial.

What the unix-port virtual board does by running the VM on its flash image, the Pico
does as a user's board does it: the guard's files, the trust root and the artifact go
over the serial line (``mpseal.device.install``: probe, write, the board's own guard
stages it), and a boot is a power-on whose USB output is followed across resets.

Only reading is done from the host side, as a debug probe (SWD) would read a real
board's flash: ``status`` and ``ls`` mount a copy of the littlefs region of
``flash.img`` in the MicroPython unix VM, so they work on a board whose REPL is
closed (field/sealed profile) and never disturb a trial boot with a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mpseal.device import vm
from mpseal.device.pico import FLASH_SIZE, REPL_PROMPT, VirtualPico
from mpseal.device.serialboard import SerialTransport
from mpseal.device.sim import EXIT_IDLE, EXIT_RESET, MAX_BOOTS, BootReport, VirtualBoard
from mpseal.device.vm import POWERED_OFF
from mpseal.errors import FormatError, PolicyError, TransportError, UsageError
from mpseal.formats import artifact
from mpseal.formats.trustroot import TrustRoot
from mpseal.limits import DEFAULT_LIMITS, Limits

# MicroPython's rp2 port keeps its littlefs in the last MICROPY_HW_FLASH_STORAGE_BYTES
# of the flash: 1408 KiB on RPI_PICO and on the RPI_PICO_ROMFS build.
FS_SIZE = 1408 * 1024
FS_OFFSET = FLASH_SIZE - FS_SIZE
SETTLE_QUIET = 1.5  # s of wall time with no output and an idle CPU: the boot has settled
BUSY_CYCLES = 2_000_000  # cycles per 0.5 s above which the CPU counts as busy
IDLE_LINE = "[mpseal] locked idle:"
_BOOTING = re.compile(r"^\[mpseal\] booting \S+ \S+ \(counter \d+\)")


class PicoBoard:
    """A virtual Pico folder as ``mpseal sim`` and the device commands drive it."""

    def __init__(self, folder: Path | str, firmware: Path | str | None = None) -> None:
        self.pico = VirtualPico(folder, firmware)
        self.folder = self.pico.folder
        self.flash = self.pico.flash

    @classmethod
    def create(
        cls, folder: Path | str, *, romfs: bool = False, firmware: Path | str | None = None
    ) -> PicoBoard:
        VirtualPico.create(folder, romfs=romfs, firmware=firmware)
        return cls(folder, firmware)

    @property
    def board(self) -> str:
        return self.pico.info.board

    @property
    def hardware_id(self) -> str:
        return self.pico.hardware_id

    # -- read from the host (a debug probe's view) ----------------------------------------

    @contextlib.contextmanager
    def _fs_copy(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="mpseal-pico-") as tmp:
            path = Path(tmp) / "fs.img"
            with self.flash.open("rb") as f:
                f.seek(FS_OFFSET)
                path.write_bytes(f.read(FS_SIZE))
            yield path

    def formatted(self) -> bool:
        """False until the firmware's first boot formatted its littlefs (erased region)."""
        with self.flash.open("rb") as f:
            f.seek(FS_OFFSET)
            return f.read(8192) != b"\xff" * 8192

    def _read(self, *args: str) -> object:
        if not self.formatted():
            raise UsageError(
                f"the virtual Pico in {self.folder} has no filesystem yet: it was "
                "never powered on (mpseal sim install does that)"
            )
        with self._fs_copy() as image:
            res = vm.run(vm.runtime_dir() / "simboard.py", [str(image), "--host-guard", *args])
        replies = res.replies()
        if res.returncode != 0 or not replies:
            last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise TransportError(f"reading the virtual Pico's flash ({args[0]}) failed: {last[0]}")
        return replies[-1]

    def listdir(self, folder: str = "/") -> list[tuple[str, bool, int]]:
        listing = self._read("ls", folder)
        if not isinstance(listing, list):
            raise FormatError("virtual Pico listing is not a list")
        return listing

    def files(self) -> dict[str, tuple[int, str]]:
        """Every file in the flash's filesystem: its size and SHA-256 (hex), by path."""
        listing = self._read("tree")
        if not isinstance(listing, list):
            raise FormatError("virtual Pico file tree is not a list")
        return {str(p): (int(n), str(h)) for p, n, h in listing}

    def status(self) -> dict[str, object]:
        """The guard's state, slots and log, read from the flash (the board stays off)."""
        result = self._read("status")
        if not isinstance(result, dict):
            raise FormatError("the guard's status reply is not a dict")
        return result

    # -- over the USB serial line ----------------------------------------------------------

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the powered board is at its REPL, locked idle, or quietly running."""
        deadline = time.monotonic() + timeout
        last_len, last_cycles, quiet_since = -1, -1, time.monotonic()
        seen = 0
        while time.monotonic() < deadline:
            out = self.pico.output
            if out.rstrip().endswith(REPL_PROMPT.rstrip()) or IDLE_LINE.encode() in out:
                return
            try:
                cycles = self.pico.counters().cycles
            except TransportError:
                return  # powered off (cut): nothing more will happen
            busy = last_cycles >= 0 and cycles - last_cycles > BUSY_CYCLES
            if len(out) != last_len or busy:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= SETTLE_QUIET:
                return
            last_len, last_cycles = len(out), cycles
            seen = self.pico.wait_news(seen, 0.5)

    @contextlib.contextmanager
    def session(
        self, *, limits: Limits = DEFAULT_LIMITS, settle: float = 60.0
    ) -> Iterator[SerialTransport]:
        """Power on, let the boot settle, and open mpseal's serial transport; power off after."""
        self.pico.start()
        try:
            self.settle(settle)
            with SerialTransport(self.pico.path, limits=limits) as transport:
                yield transport
        finally:
            self.pico.stop()

    def install(
        self,
        blob: bytes,
        root: TrustRoot,
        profile: str = "dev",
        check_on_host: bool = True,
        release_key: bytes | None = None,
    ) -> dict[str, object]:
        """Install the guard (if needed) and stage ``blob`` through it, over USB serial
        (an encrypted release with ``release_key``, wrapped for this board's id)."""
        from mpseal.device.install import install as install_over_serial

        if check_on_host:
            artifact.verify(blob, root, board=self.board)
        with self.session() as transport:
            try:
                result = install_over_serial(
                    transport,
                    blob,
                    root,
                    profile=profile,
                    replace_root=False,
                    release_key=release_key,
                )
            except PolicyError as e:
                raise PolicyError(f"the device's guard refused the artifact: {e}") from None
        return {
            "app": result.app,
            "version": result.version,
            "counter": result.counter,
            "slot": result.slot,
            "mount": result.decision.mount,
            "guard_at": result.guard_at,
        }

    def boot(
        self, max_boots: int = MAX_BOOTS, run_for: float | None = 10.0, timeout: float = 600.0
    ) -> BootReport:
        """Power the board on and follow its resets until it settles (as VirtualBoard.boot).

        Settled: the board reset after a committed image ran (or was just committed),
        the guard idles (locked), or the REPL came back (dev profile). ``run_for``: a
        boot still running after that many seconds of *emulated* time is powered off
        (outcome "running"), as is one whose CPU sleeps with nothing left to wake it.
        """
        if not self.formatted() or not any(name == "main.py" for name, _, _ in self.listdir("/")):
            raise UsageError("nothing is installed on this virtual board; run 'mpseal sim install'")
        self.pico.start()
        try:
            return self._follow(max_boots, run_for, timeout)
        finally:
            self.pico.stop()

    def follow_one_boot(self, run_for: float | None = 10.0, timeout: float = 600.0) -> BootReport:
        """Follow the powered board's current boot only: outcome "cut" (power lost by
        ``cut_after``), "reset" (the chip reset: the next boot is not followed), or as
        :meth:`boot`."""
        return self._follow(1, run_for, timeout, one=True)

    def _follow(
        self, max_boots: int, run_for: float | None, timeout: float, one: bool = False
    ) -> BootReport:
        deadline = time.monotonic() + timeout
        still: tuple[int, int] | None = None  # (cycles, nanos) when last seen changing
        still_since = time.monotonic()
        seen = 0
        while True:
            segments = self.pico.boot_outputs()
            text = _text(self.pico.output)
            boots = len(segments)
            codes = [EXIT_RESET] * (boots - 1)
            current = _text(segments[-1])
            if self.pico.cut is not None:
                return BootReport(boots, "cut", text, codes)
            if one and boots > 1:
                return BootReport(1, "reset", _text(segments[0]), [EXIT_RESET])
            if boots > 1 and _settled(_text(segments[-2])):
                return BootReport(boots - 1, "running", _text(b"".join(segments[:-1])), codes)
            if IDLE_LINE in current:
                return BootReport(boots, "idle", text, [*codes, EXIT_IDLE])
            if current.rstrip().endswith(REPL_PROMPT.decode().rstrip()):
                return BootReport(boots, "returned", text, [*codes, 0])
            if boots > max_boots:
                return BootReport(max_boots, "limit", text, codes[:max_boots])
            try:
                now = self.pico.counters()
            except TransportError:
                return BootReport(boots, "limit", text, codes)
            started = self.pico.last_reset_nanos()
            if run_for is not None and now.nanos - started >= run_for * 1e9:
                return BootReport(boots, "running", text, [*codes, POWERED_OFF])
            if (now.cycles, now.nanos) != still:
                still, still_since = (now.cycles, now.nanos), time.monotonic()
            elif time.monotonic() - still_since >= SETTLE_QUIET:
                # Asleep with no timer set: only input would wake it (an app in input()).
                return BootReport(boots, "running", text, [*codes, POWERED_OFF])
            if time.monotonic() > deadline:
                return BootReport(
                    boots, "running" if _settled(current) else "limit", text, [*codes, POWERED_OFF]
                )
            seen = self.pico.wait_news(seen, 0.3)


def open_sim(folder: Path | str) -> VirtualBoard | PicoBoard:
    """The virtual board in ``folder``: a virtual Pico, or the unix-port board."""
    from mpseal.device.pico import is_pico_folder

    return PicoBoard(folder) if is_pico_folder(Path(folder)) else VirtualBoard(Path(folder))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\r\n", "\n")


def _settled(text: str) -> bool:
    """A committed image ran in this boot, or the trial image was just committed."""
    for line in text.splitlines():
        if _BOOTING.match(line) and "on trial" not in line:
            return True
        if line.startswith("[mpseal] committed "):
            return True
    return False
