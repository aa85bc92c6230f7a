"""The virtual Raspberry Pi Pico: stock MicroPython firmware in the RP2040 emulator rp2040js.

A board folder holds ``board.json`` (firmware name, unique id) and ``flash.img``,
the whole 2 MiB flash chip: the firmware as a UF2 drop puts it, then whatever the
firmware's littlefs (and, on the ROMFS image, its ROMFS partition) wrote. Each
power-on is one ``node rp2emu/picobridge.mjs`` process; see that file and
docs/virtual-pico.md for what it emulates and how (flash writes through the boot
ROM written straight through to ``flash.img``, USB-CDC that idles, watchdog reset,
the flash chip's unique id, power cut at the N-th flash write).

The USB serial port appears as a pty (:attr:`VirtualPico.path`): open it with
mpseal's :class:`~mpseal.device.serialboard.SerialTransport` or ``mpremote connect``
exactly as a real Pico's ``/dev/ttyACM0``. Unlike a real USB device, the pty stays
when the board resets or loses power (like a USB-UART bridge), so a program holding
it sees silence, not a vanished port.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from mpseal.device.serialboard import SerialTransport
from mpseal.errors import ConfigError, ToolError, UsageError
from mpseal.fsutil import read_limited, write_atomic
from mpseal.limits import DEFAULT_LIMITS, Limits

FLASH_SIZE = 2 * 1024 * 1024
EMULATOR = "rp2040js"
FIRMWARES = {"RPI_PICO": "rp2-RPI_PICO", "RPI_PICO_ROMFS": "rp2-RPI_PICO_ROMFS"}
MP_VERSION = "micropython-v1.28.0"
BOOTROM = "rp2040-bootrom/bootrom-b1.bin"
BRIDGE_DIR = Path(__file__).parent / "rp2emu"
OUTPUT_KEEP = 1024 * 1024  # bytes of the board's output kept since power-on
CPU_HZ = 125_000_000  # rp2040js's clock: one cycle per 8 ns
REPL_PROMPT = b">>> "


def is_pico_folder(folder: Path) -> bool:
    """True if ``folder`` holds a virtual Pico (not a unix-port virtual board)."""
    path = Path(folder) / "board.json"
    try:
        raw = json.loads(read_limited(path, 4096, "board.json"))
    except (OSError, ValueError, UsageError):
        return False
    return isinstance(raw, dict) and raw.get("emulator") == EMULATOR


def firmware_dir(explicit: Path | str | None = None) -> Path:
    """Where the stock firmware images are: the argument, ``$MPSEAL_FIRMWARE_DIR``, or
    ``shared/firmware`` beside the repository (or beside its parent folder, for a git
    worktree kept in a folder of worktrees)."""
    if explicit:
        found = Path(explicit)
    elif os.environ.get("MPSEAL_FIRMWARE_DIR"):
        found = Path(os.environ["MPSEAL_FIRMWARE_DIR"])
    else:
        repo = Path(__file__).resolve().parents[3]
        found = repo.parent / "shared" / "firmware"
        if not found.is_dir() and (repo.parent.parent / "shared" / "firmware").is_dir():
            found = repo.parent.parent / "shared" / "firmware"
    if not (found / BOOTROM).is_file():
        raise ConfigError(
            f"no RP2040 firmware folder at {found} (it needs {BOOTROM}); "
            "set MPSEAL_FIRMWARE_DIR or pass --firmware-dir"
        )
    return found


def _num(value: object) -> int:
    """A count from the emulator's JSON (0 if it is missing or not a number)."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise ToolError("the virtual Pico needs Node.js (node) on PATH; run scripts/bootstrap.sh")
    if not (BRIDGE_DIR / "node_modules" / "rp2040js" / "package.json").is_file():
        raise ToolError(
            f"rp2040js is not installed in {BRIDGE_DIR}; run scripts/bootstrap.sh "
            "(it runs 'npm ci' there)"
        )
    return node


@dataclass(frozen=True)
class PicoInfo:
    firmware: str  # a key of FIRMWARES
    unique_id: str  # 16 hex digits: machine.unique_id()
    board: str = "rp2"
    emulator: str = EMULATOR
    flash_size: int = FLASH_SIZE
    firmware_dir: str | None = None  # given at create; else $MPSEAL_FIRMWARE_DIR or default


@dataclass(frozen=True)
class Counters:
    """The emulated chip's counters since power-on (watchdog resets included)."""

    cycles: int  # CPU cycles executed (sleep not counted)
    nanos: int  # emulated time (sleep included)
    writes: int  # flash operations done (each erase and each program counts one)
    resets: int  # watchdog resets (machine.reset(), WDT timeout)
    halted: bool  # power lost by cut_after
    run_ms: int = 0  # wall time the emulator spent running the chip (not waiting for input)


class VirtualPico:
    """One virtual Pico in ``folder``; :meth:`start` powers it on."""

    def __init__(self, folder: Path | str, firmware: Path | str | None = None) -> None:
        self.folder = Path(folder).absolute()  # the emulator runs in BRIDGE_DIR
        self.flash = self.folder / "flash.img"
        self.info = self._load_info()
        self._firmware_dir = firmware or self.info.firmware_dir
        # Power-ons that give no ``flash_timing`` use this (tests that only count writes
        # turn it off: each erase's emulated time is otherwise waited for in wall time
        # once the CPU idles).
        self.flash_timing = os.environ.get("MPSEAL_PICO_FLASH_TIMING", "1") != "0"
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._req_lock = threading.Lock()  # one control request at a time
        self._output = bytearray()
        self._events: list[dict[str, object]] = []
        self._replies: list[dict[str, object]] = []
        self._cut: dict[str, object] | None = None
        self._reset_mark = 0  # where the output of the chip's last (re)start begins
        self._marks: list[int] = []  # the same for every watchdog reset since power-on
        self._exited = False
        self._master = -1
        self._slave = -1
        self._thread: threading.Thread | None = None
        self._closing = False
        self.path = ""
        self.to_board = 0
        self.from_board = 0
        self.power_ons = 0

    # -- the board folder ------------------------------------------------------------

    @classmethod
    def create(
        cls,
        folder: Path | str,
        *,
        romfs: bool = False,
        firmware: Path | str | None = None,
        unique_id: bytes | None = None,
    ) -> VirtualPico:
        """A new board: erased 2 MiB flash, the stock image put on it, a random unique id."""
        folder = Path(folder)
        if (folder / "flash.img").exists() or (folder / "board.json").exists():
            raise UsageError(f"a virtual board already exists in {folder}; pick another folder")
        name = "RPI_PICO_ROMFS" if romfs else "RPI_PICO"
        image = cls._image(firmware_dir(firmware), name)
        if unique_id is not None and len(unique_id) != 8:
            raise UsageError("a Pico's unique id is 8 bytes")
        info = PicoInfo(
            name,
            (unique_id or secrets.token_bytes(8)).hex(),
            firmware_dir=str(Path(firmware).resolve()) if firmware else None,
        )
        folder.mkdir(parents=True, exist_ok=True)
        flash = bytearray(b"\xff" * FLASH_SIZE)
        fw = image.read_bytes()
        if len(fw) > FLASH_SIZE:
            raise ConfigError(f"{image} is larger than the Pico's flash")
        flash[: len(fw)] = fw
        created = [folder / "flash.img", folder / "board.json"]
        try:
            write_atomic(created[0], bytes(flash))
            write_atomic(created[1], json.dumps(info.__dict__, indent=2).encode())
        except BaseException:
            for path in created:
                path.unlink(missing_ok=True)
            raise
        return cls(folder, firmware)

    @staticmethod
    def _image(fw_dir: Path, name: str) -> Path:
        image = fw_dir / MP_VERSION / FIRMWARES[name] / "firmware.bin"
        if not image.is_file():
            raise ConfigError(f"no {name} firmware at {image}")
        return image

    def _load_info(self) -> PicoInfo:
        path = self.folder / "board.json"
        if not path.is_file() or not self.flash.is_file():
            raise UsageError(
                f"no virtual Pico in {self.folder}; run 'mpseal sim create --board rp2' first"
            )
        try:
            raw = json.loads(read_limited(path, 4096, "board.json"))
            fw_dir = raw.get("firmware_dir")
            info = PicoInfo(
                str(raw["firmware"]),
                str(raw["unique_id"]),
                firmware_dir=str(fw_dir) if fw_dir else None,
            )
            bytes.fromhex(info.unique_id)
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path} is damaged; re-create the virtual Pico") from None
        if (
            raw.get("emulator") != EMULATOR
            or info.firmware not in FIRMWARES
            or len(info.unique_id) != 16
        ):
            raise ConfigError(f"{path} is not a virtual Pico's board.json")
        if self.flash.stat().st_size != FLASH_SIZE:
            raise ConfigError(f"{self.flash} is not a 2 MiB flash image")
        return info

    @property
    def unique_id(self) -> bytes:
        return bytes.fromhex(self.info.unique_id)

    @property
    def hardware_id(self) -> str:
        return self.info.unique_id

    # -- power -----------------------------------------------------------------------

    def start(
        self, *, cut_after: int = 0, trace: Path | None = None, flash_timing: bool | None = None
    ) -> str:
        """Power on; returns the pty path of the USB serial port.

        ``cut_after=N``: power is lost at the N-th flash write (erase or program) of
        this power-on, before it is done; :meth:`wait_off` waits for it.
        ``trace``: append every flash operation done to that file (``E off len`` /
        ``P off len hex``). ``flash_timing``: each erase and program takes the flash
        chip's typical time (W25Q16JV: 45 ms per 4 KiB sector, 150 ms per 64 KiB block,
        0.4 ms per 256-byte page) in cycles and emulated time; False: no time; None:
        :attr:`flash_timing`.
        """
        if self._proc is not None:
            raise UsageError("the virtual Pico is already on")
        if cut_after < 0:
            raise UsageError("cut_after counts flash writes from 1")
        node = _node()
        fw_dir = firmware_dir(self._firmware_dir)
        if self._master < 0:
            self._open_pty()
        ours, theirs = socket.socketpair()
        fw_dir = fw_dir.resolve()
        cmd = [
            node,
            str(BRIDGE_DIR / "picobridge.mjs"),
            "--bootrom",
            str(fw_dir / BOOTROM),
            "--firmware",
            str(self._image(fw_dir, self.info.firmware)),
            "--flash",
            str(self.flash),
            "--uid",
            self.info.unique_id,
            "--control-fd",
            str(theirs.fileno()),
        ]
        if cut_after:
            cmd += ["--cut-after", str(cut_after)]
        if trace is not None:
            cmd += ["--trace", str(Path(trace).resolve())]
        if not (self.flash_timing if flash_timing is None else flash_timing):
            cmd += ["--flash-timing", "0"]
        with self._lock:
            self._output.clear()
            self._events.clear()
            self._replies.clear()
            self._cut = None
            self._reset_mark = 0
            self._marks = []
            self._exited = False
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=[theirs.fileno()],
                cwd=BRIDGE_DIR,
                start_new_session=True,
            )
        except OSError as e:
            ours.close()
            raise ToolError(f"cannot start the RP2040 emulator: {e.strerror}") from None
        finally:
            theirs.close()
        os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
        self._ctl = ours
        self._proc = proc
        self.power_ons += 1
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._relay, name="pico-relay", daemon=True)
            self._thread.start()
        if not self.wait_event("power-on", 15.0):
            err = self._stderr_tail()
            self._kill()
            raise ToolError(f"the RP2040 emulator did not start: {err or 'no output'}")
        return self.path

    def power_off(self) -> None:
        """Pull the plug: the emulator stops at once; the flash keeps every write done."""
        self._kill()

    def power_cycle(
        self, *, cut_after: int = 0, trace: Path | None = None, flash_timing: bool | None = None
    ) -> str:
        self._kill()
        return self.start(cut_after=cut_after, trace=trace, flash_timing=flash_timing)

    def stop(self) -> None:
        """Power off and close the serial port (no node process is left behind)."""
        self._kill()
        self._closing = True
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
        self.path = ""

    close = stop

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._kill()

    @property
    def pid(self) -> int | None:
        """The emulator's process id while powered."""
        return self._proc.pid if self._proc is not None else None

    @property
    def on(self) -> bool:
        """Powered and running (not cut, not stopped)."""
        with self._lock:
            return self._proc is not None and not self._exited and self._cut is None

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        ctl, self._ctl = self._ctl, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    if f is not None:
                        f.close()
        if ctl is not None:
            ctl.close()

    def _stderr_tail(self) -> str:
        proc = self._proc
        if proc is None or proc.stderr is None or proc.poll() is None:
            return ""
        lines = proc.stderr.read(8192).decode("utf-8", "replace").strip().splitlines()
        errors = [ln.strip() for ln in lines if "Error" in ln or ln.startswith("picobridge:")]
        return (errors or lines or [f"exit code {proc.returncode}"])[0][:300]

    # -- what the board says ----------------------------------------------------------

    @property
    def output(self) -> bytes:
        """Everything the board printed on its USB serial port since this power-on
        (the boot log), whether or not a program had the port open."""
        with self._lock:
            return bytes(self._output)

    def last_reset_nanos(self) -> int:
        """Emulated time (ns since power-on) when the chip last started."""
        with self._lock:
            for e in reversed(self._events):
                if e.get("event") == "reset":
                    return _num(e.get("nanos"))
        return 0

    def boot_outputs(self) -> list[bytes]:
        """:attr:`output` split where the chip restarted (watchdog reset): one per boot.

        The split is as exact as the host sees it: bytes the old chip sent just before
        its reset may land at the start of the next piece."""
        with self._lock:
            data, marks = bytes(self._output), [0, *self._marks]
        return [data[a:b] for a, b in zip(marks, [*marks[1:], len(data)], strict=True)]

    def wait_output(
        self, needle: bytes | str | re.Pattern[bytes], timeout: float = 30.0, start: int = 0
    ) -> bool:
        """Wait until the output (from byte ``start``) contains ``needle``."""
        if isinstance(needle, str):
            needle = needle.encode()
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                data = bytes(self._output[start:])
                found = needle.search(data) if isinstance(needle, re.Pattern) else needle in data
                if found:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or self._exited:
                    return False
                self._cond.wait(min(left, 0.5))

    def wait_news(self, seen: int, timeout: float) -> int:
        """Wait up to ``timeout`` for output or events beyond ``seen`` (a value this
        returned before; 0 at first); returns the new value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = len(self._output) + len(self._events)
                left = deadline - time.monotonic()
                if now != seen or left <= 0 or self._exited:
                    return now
                self._cond.wait(left)

    def wait_off(self, timeout: float = 60.0) -> bool:
        """Wait for the power cut set by ``cut_after``; True if it happened."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._cut is None and not self._exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return self._cut is not None

    @property
    def cut(self) -> dict[str, object] | None:
        """The power-cut event (``writes`` done before it, the ``op`` not done), if any."""
        with self._lock:
            return dict(self._cut) if self._cut else None

    @property
    def events(self) -> list[dict[str, object]]:
        with self._lock:
            return list(self._events)

    def _request(self, req: dict[str, object], timeout: float) -> dict[str, object]:
        ctl = self._ctl
        if ctl is None:
            raise UsageError("the virtual Pico is off")
        with self._req_lock:
            with self._lock:
                self._replies.clear()
            try:
                ctl.sendall(json.dumps(req).encode() + b"\n")
            except OSError:
                raise ToolError("the RP2040 emulator is not running") from None
            deadline = time.monotonic() + timeout
            with self._cond:
                while not self._replies:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._exited:
                        raise ToolError("the RP2040 emulator did not answer")
                    self._cond.wait(min(left, 0.5))
                return self._replies.pop(0)

    def arm_cut(self, after: int, timeout: float = 10.0) -> None:
        """Lose power at the ``after``-th flash write from now (as ``cut_after`` counts
        from power-on); 0 disarms."""
        if after < 0:
            raise UsageError("a power cut is armed at write 1 or later")
        self._request({"op": "cut", "after": after}, timeout)

    def counters(self, timeout: float = 10.0) -> Counters:
        """The emulated cycle counter, emulated time and flash writes since power-on."""
        r = self._request({"op": "counters"}, timeout)
        return Counters(
            _num(r.get("cycles")),
            _num(r.get("nanos")),
            _num(r.get("writes")),
            _num(r.get("resets")),
            r.get("halted") is True,
            _num(r.get("run_ms")),
        )

    def wait_event(self, name: str, timeout: float, count: int = 1) -> bool:
        """Wait until the emulator has reported ``count`` events ``name`` ("reset",
        "cut", "power-on") since this power-on."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for e in self._events if e.get("event") == name) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self._exited:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    # -- the USB serial port ------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave  # the slave stays open: no EIO on master
        self.path = os.ttyname(slave)

    def _relay(self) -> None:
        ctl_buf = b""
        while not self._closing:
            proc, ctl = self._proc, self._ctl
            fds = [self._master]
            out_fd = -1
            if proc is not None and proc.stdout is not None and not proc.stdout.closed:
                with contextlib.suppress(ValueError):
                    out_fd = proc.stdout.fileno()
                    fds.append(out_fd)
            if ctl is not None and ctl.fileno() >= 0:
                fds.append(ctl.fileno())
            try:
                ready, _, _ = select.select(fds, [], [], 0.1)
            except (OSError, ValueError):
                continue  # a power cycle closed an fd under us
            for fd in ready:
                try:
                    if fd == self._master:
                        data = os.read(fd, 65536)
                        if proc is not None and self._cut is None and proc.stdin is not None:
                            self.to_board += len(data)
                            with contextlib.suppress(OSError, ValueError):
                                proc.stdin.write(data)
                                proc.stdin.flush()
                    elif fd == out_fd:
                        data = os.read(fd, 65536)
                        if not data:
                            self._mark_exited(proc)
                            continue
                        self.from_board += len(data)
                        with self._cond:
                            if len(self._output) < OUTPUT_KEEP:
                                self._output += data[: OUTPUT_KEEP - len(self._output)]
                            self._cond.notify_all()
                        with contextlib.suppress(BlockingIOError):  # nobody reads: dropped
                            os.write(self._master, data)
                    elif ctl is not None and fd == ctl.fileno():
                        data = ctl.recv(65536)
                        if not data:
                            continue
                        ctl_buf += data
                        *lines, ctl_buf = ctl_buf.split(b"\n")
                        self._on_control(lines)
                except BlockingIOError:
                    continue
                except (OSError, ValueError):
                    continue

    def _mark_exited(self, proc: subprocess.Popen[bytes] | None) -> None:
        with self._cond:
            if proc is self._proc:
                self._exited = True
            self._cond.notify_all()
        time.sleep(0.05)

    def _on_control(self, lines: list[bytes]) -> None:
        with self._cond:
            for line in lines:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                if "reply" in msg:
                    self._replies.append(msg)
                else:
                    self._events.append(msg)
                    if msg.get("event") == "cut":
                        self._cut = msg
                    elif msg.get("event") == "reset":
                        self._reset_mark = len(self._output)
                        self._marks.append(self._reset_mark)
            self._cond.notify_all()

    # -- talking to it --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Bytes to the board's USB serial port, as if typed by the program holding it."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise UsageError("the virtual Pico is off")
        try:
            proc.stdin.write(data)
            proc.stdin.flush()
        except (OSError, ValueError):
            raise ToolError("the RP2040 emulator is not running") from None
        self.to_board += len(data)

    def connect(self, limits: Limits = DEFAULT_LIMITS) -> SerialTransport:
        """mpseal's serial transport on the USB serial port (the board must be on)."""
        if not self.path:
            raise UsageError("the virtual Pico is off; start it first")
        return SerialTransport(self.path, limits=limits)

    def wait_repl(self, timeout: float = 30.0) -> None:
        """Wait for the REPL prompt after the last power-on or reset (no main.py running)."""
        with self._lock:
            start = self._reset_mark
        if not self.wait_output(REPL_PROMPT, timeout, start=start):
            tail = self.output.decode("utf-8", "replace").strip().splitlines()[-1:] or ["nothing"]
            raise ToolError(f"the virtual Pico did not reach its REPL: {tail[0][:200]}")
