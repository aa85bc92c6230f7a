"""The virtual board: the real MicroPython unix VM with a littlefs flash image file.

A board folder holds ``flash.img`` (the flash chip, littlefs2, 4 KiB blocks),
``board.json`` (board name, flash size, heap size) and, once a card is inserted,
``sd.img`` (an SD card, FAT, served as ``machine.SDCard`` by ``runtime/simsdcard.py``).
Every operation on the flash and the card runs inside the VM (``runtime/simboard.py``),
so the images are always written by MicroPython's own littlefs and FAT, exactly as on a
device.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mpseal.device import vm
from mpseal.device.guard_install import guard_files
from mpseal.errors import ConfigError, FormatError, PolicyError, TransportError, UsageError
from mpseal.formats import artifact, encrypted
from mpseal.formats.boards import get_board
from mpseal.formats.trustroot import TrustRoot
from mpseal.fsutil import read_limited, write_atomic
from mpseal.limits import DEFAULT_LIMITS

BLOCK_SIZE = 4096
DEFAULT_FLASH = 2 * 1024 * 1024
SD_BLOCK = 512
DEFAULT_SD_CARD = 1024 * 1024
INCOMING_PATH = "/mpseal/incoming.mpseal"
INCOMING_KEY = "/mpseal/incoming.key"
SIM_ID = "/mpseal/sim-id"  # read by runtime/mpseal_port.py unique_id()
EXIT_RESET = 17  # mpseal_port.py: the guard asked for a reset
EXIT_IDLE = 18  # the guard found nothing it may boot and idles, locked
EXIT_CRASH = 19  # simboard.py: main.py raised (on a board: traceback, then the REPL)
MAX_BOOTS = 6


@dataclass
class BootReport:
    """What happened over the boots of one `sim boot`."""

    boots: int
    # "running" (a committed image ran), "idle", "returned" (main.py returned: the REPL
    # follows on a board; the dev profile), "crashed" (main.py raised), "limit"
    outcome: str
    output: str
    exit_codes: list[int]

    @property
    def guard_lines(self) -> list[str]:
        return [
            ln[len("[mpseal] ") :] for ln in self.output.splitlines() if ln.startswith("[mpseal] ")
        ]

    def crashes(self) -> list[str]:
        """The guard's reports of an app that crashed, in order."""
        return [ln for ln in self.guard_lines if "app crashed: " in ln]

    def ran(self) -> list[tuple[str, str, int]]:
        """(app, version, counter) of every image the guard started, in order."""
        found = []
        for line in self.guard_lines:
            m = _BOOTING.match(line)
            if m:
                found.append((m["app"], m["version"], int(m["counter"])))
        return found


_BOOTING = re.compile(r"booting (?P<app>\S+) (?P<version>\S+) \(counter (?P<counter>\d+)\)")


@dataclass(frozen=True)
class BoardInfo:
    board: str = "unix"
    flash_size: int = DEFAULT_FLASH
    heapsize: str | None = None
    firmware: str = ""  # runtime/simfirmware.py: what the firmware lacks or adds


class VirtualBoard:
    def __init__(self, folder: Path) -> None:
        # Absolute: the VM may run with another working folder (the runtime's), and a
        # relative --sim path is the user's, relative to where they typed it.
        self.folder = Path(folder).absolute()
        self.flash = self.folder / "flash.img"
        self.sd_card = self.folder / "sd.img"  # present: a card is in the slot
        self.info = self._load_info()

    @classmethod
    def create(
        cls,
        folder: Path,
        board: str = "unix",
        flash_size: int = DEFAULT_FLASH,
        heapsize: str | None = None,
    ) -> VirtualBoard:
        get_board(board)
        if flash_size % BLOCK_SIZE or not 64 * 1024 <= flash_size <= 64 * 1024 * 1024:
            raise UsageError("flash size must be a multiple of 4 KiB between 64 KiB and 64 MiB")
        folder = Path(folder)
        if (folder / "flash.img").exists():
            raise UsageError(f"a virtual board already exists in {folder}; pick another folder")
        folder.mkdir(parents=True, exist_ok=True)
        info = BoardInfo(board, flash_size, heapsize)
        created = [folder / "board.json", folder / "flash.img"]
        try:
            write_atomic(created[0], json.dumps(asdict(info), indent=2).encode())
            write_atomic(created[1], b"\xff" * flash_size)
            sim = cls(folder)
            sim._call("format")
            # The virtual board's machine.unique_id(): random, like a chip's fuse-programmed id.
            sim.put(os.urandom(8).hex().encode() + b"\n", SIM_ID)
        except BaseException:
            for path in created:  # never leave a half-made board behind
                path.unlink(missing_ok=True)
            raise
        return sim

    def _load_info(self) -> BoardInfo:
        path = self.folder / "board.json"
        if not path.is_file() or not self.flash.is_file():
            raise UsageError(f"no virtual board in {self.folder}; run 'mpseal sim create' first")
        try:
            raw = json.loads(read_limited(path, 4096, "board.json"))
            return BoardInfo(
                str(raw["board"]),
                int(raw["flash_size"]),
                raw.get("heapsize"),
                str(raw.get("firmware", "")),
            )
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path} is damaged; re-create the virtual board") from None

    def set_firmware(self, firmware: str) -> None:
        """Give the board another firmware (runtime/simfirmware.py SPEC, "" = the unix port's)."""
        self.info = BoardInfo(self.info.board, self.info.flash_size, self.info.heapsize, firmware)
        write_atomic(self.folder / "board.json", json.dumps(asdict(self.info), indent=2).encode())

    def command(
        self,
        *args: str,
        heapsize: str | None = None,
        cut: int = 0,
        tear: bool = False,
        timeout: float = 120,
        power_off_after: float | None = None,
        eio: int = 0,
    ) -> vm.VmResult:
        """One run of the VM on this board's flash; ``cut``: lose power at that block write;
        ``eio``: the flash fails (OSError EIO) from that block operation on."""
        power = (["--cut", str(cut)] if cut else []) + (["--tear"] if tear else [])
        power += ["--eio", str(eio)] if eio else []
        power += ["--firmware", self.info.firmware] if self.info.firmware else []
        power += ["--sd", str(self.sd_card)] if self.sd_card.is_file() else []
        return vm.run(
            vm.runtime_dir() / "simboard.py",
            [str(self.flash), *power, *args],
            heapsize=heapsize or self.info.heapsize,
            timeout=timeout,
            power_off_after=power_off_after,
        )

    def _call(self, *args: str, heapsize: str | None = None) -> object:
        res = self.command(*args, heapsize=heapsize)
        replies = res.replies()
        if res.returncode != 0 or not replies:
            last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise TransportError(f"virtual board command {args[0]!r} failed: {last[0]}")
        return replies[-1]

    def put(self, data: bytes, dest: str) -> None:
        self.put_many({dest: data})

    def put_many(self, files: dict[str, bytes]) -> None:
        """Copy several files onto the flash in one VM run (each written atomically)."""
        self._send(("put",), files, "the virtual board")

    def _send(self, command: tuple[str, ...], files: dict[str, bytes], where: str) -> None:
        with tempfile.TemporaryDirectory(prefix="mpseal-sim-") as tmp:
            args = []
            for i, (dest, data) in enumerate(files.items()):
                src = Path(tmp) / str(i)
                src.write_bytes(data)
                args += [str(src), dest]
            sizes = self._call(*command, *args)
        if sizes != [len(d) for d in files.values()]:
            raise TransportError(f"{where} stored {sizes} bytes, not what was sent")

    def get(self, src: str) -> bytes:
        with tempfile.NamedTemporaryFile(prefix="mpseal-sim-") as tmp:
            self._call("get", src, tmp.name)
            return read_limited(Path(tmp.name), DEFAULT_LIMITS.artifact_max_length, src)

    def listdir(self, folder: str = "/") -> list[tuple[str, bool, int]]:
        listing = self._call("ls", folder)
        if not isinstance(listing, list):
            raise FormatError("virtual board listing is not a list")
        return listing

    def insert_sd_card(self, size: int = DEFAULT_SD_CARD) -> None:
        """Put a new, FAT-formatted SD card in the board's slot (formatted by the VM)."""
        if size % SD_BLOCK or not 128 * 1024 <= size <= 64 * 1024 * 1024:
            raise UsageError("SD card size must be a multiple of 512 between 128 KiB and 64 MiB")
        write_atomic(self.sd_card, bytes(size))
        try:
            self._call("card", "format")
        except BaseException:
            self.sd_card.unlink(missing_ok=True)
            raise

    def sd_put(self, files: dict[str, bytes]) -> None:
        """Copy files onto the SD card, as a PC's card reader would."""
        self._need_card()
        self._send(("card", "put"), files, "the SD card")

    def sd_listdir(self, folder: str = "/") -> list[tuple[str, bool, int]]:
        self._need_card()
        listing = self._call("card", "ls", folder)
        if not isinstance(listing, list):
            raise FormatError("SD card listing is not a list")
        return listing

    def _need_card(self) -> None:
        if not self.sd_card.is_file():
            raise UsageError(f"the virtual board {self.folder} has no SD card; insert one first")

    @property
    def hardware_id(self) -> str:
        return self.get(SIM_ID).decode().strip()

    def install_guard(self, root: TrustRoot, profile: str) -> None:
        """Put the boot guard, its config and the trust root on the flash."""
        self.put_many(guard_files(self.info.board, profile, root.raw))

    def install(
        self,
        blob: bytes,
        root: TrustRoot,
        profile: str = "dev",
        check_on_host: bool = True,
        release_key: bytes | None = None,
    ) -> dict[str, object]:
        """Hand ``blob`` to the device's boot guard, which verifies and stages it.

        The host checks first too (a clear error without touching the board);
        ``check_on_host=False`` sends it unchecked, to prove the guard refuses alone.
        An encrypted release needs ``release_key``: it goes to the board wrapped for
        this board's hardware id (formats/encrypted.py), as the update server sends it.
        """
        if check_on_host:
            artifact.verify(blob, root, board=self.info.board)
        if not any(name == "mpseal_guard.mpy" for name, _, _ in self.listdir("/lib")):
            self.install_guard(root, profile)
        files = {INCOMING_PATH: blob}
        args = [INCOMING_PATH]
        if release_key is not None:
            man = artifact.decode(blob).manifest
            files[INCOMING_KEY] = encrypted.wrap(release_key, self.hardware_id, man.image_sha256)
            args.append(INCOMING_KEY)
        self.put_many(files)
        result = self._call("stage", *args)
        if not isinstance(result, dict):
            raise FormatError("the guard's reply to stage is not a dict")
        if "refused" in result:
            raise PolicyError(f"the device's guard refused the artifact: {result['refused']}")
        return result

    def status(self) -> dict[str, object]:
        result = self._call("status")
        if not isinstance(result, dict):
            raise FormatError("the guard's status reply is not a dict")
        return result

    def boot(
        self,
        max_boots: int = MAX_BOOTS,
        heapsize: str | None = None,
        timeout: float = 120,
        run_for: float | None = None,
        eio: int = 0,
    ) -> BootReport:
        """Power the board on and follow its resets until it settles.

        Settled: a committed image ran or was just committed, the guard idles,
        or the dev profile returned to the REPL. ``run_for``: an app that never
        returns (the field and sealed profiles) is powered off after that many
        seconds of a boot; the outcome is then "running".
        """
        if not any(name == "main.py" for name, _, _ in self.listdir("/")):
            raise UsageError("nothing is installed on this virtual board; run 'mpseal sim install'")
        output: list[str] = []
        codes: list[int] = []
        for n in range(1, max_boots + 1):
            res = self.command(
                "boot", heapsize=heapsize, timeout=timeout, power_off_after=run_for, eio=eio
            )
            output.append(res.app_output() + res.stderr)
            codes.append(res.returncode)
            if res.returncode == vm.POWERED_OFF:
                return BootReport(n, "running", "".join(output), codes)
            if res.returncode == EXIT_IDLE:
                return BootReport(n, "idle", "".join(output), codes)
            if res.returncode != EXIT_RESET:
                outcome = "returned" if res.returncode == 0 else "crashed"
                return BootReport(n, outcome, "".join(output), codes)
            settled = any(
                (ln.startswith("[mpseal] booting ") and "on trial" not in ln)
                or ln.startswith("[mpseal] committed ")
                for ln in res.stdout.splitlines()
            )
            if settled:
                return BootReport(n, "running", "".join(output), codes)
        return BootReport(max_boots, "limit", "".join(output), codes)
