"""The virtual board: the real MicroPython unix VM with a littlefs flash image file.

A board folder holds ``flash.img`` (the flash chip, littlefs2, 4 KiB blocks) and
``board.json`` (board name, flash size, heap size). Every operation on the flash
runs inside the VM (``runtime/simboard.py``), so the image is always written by
MicroPython's own littlefs, exactly as on a device.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mpseal.device import vm
from mpseal.errors import ConfigError, FormatError, TransportError, UsageError
from mpseal.formats import artifact
from mpseal.formats.boards import get_board
from mpseal.formats.trustroot import TrustRoot
from mpseal.fsutil import read_limited, write_atomic
from mpseal.limits import DEFAULT_LIMITS

BLOCK_SIZE = 4096
DEFAULT_FLASH = 2 * 1024 * 1024
INSTALL_PATH = "/mpseal/app.mpseal"
TRUST_ROOT_PATH = "/mpseal/trust-root.mpsr"


@dataclass(frozen=True)
class BoardInfo:
    board: str = "unix"
    flash_size: int = DEFAULT_FLASH
    heapsize: str | None = None


class VirtualBoard:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.flash = self.folder / "flash.img"
        self.info = self._load_info()

    @classmethod
    def create(cls, folder: Path, board: str = "unix", flash_size: int = DEFAULT_FLASH,
               heapsize: str | None = None) -> VirtualBoard:
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
            return BoardInfo(str(raw["board"]), int(raw["flash_size"]), raw.get("heapsize"))
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path} is damaged; re-create the virtual board") from None

    def _call(self, *args: str, heapsize: str | None = None) -> object:
        res = vm.run(vm.runtime_dir() / "simboard.py", [str(self.flash), *args],
                     heapsize=heapsize or self.info.heapsize)
        replies = res.replies()
        if res.returncode != 0 or not replies:
            last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise TransportError(f"virtual board command {args[0]!r} failed: {last[0]}")
        return replies[-1]

    def put(self, data: bytes, dest: str) -> None:
        with tempfile.NamedTemporaryFile(prefix="mpseal-sim-") as tmp:
            tmp.write(data)
            tmp.flush()
            size = self._call("put", tmp.name, dest)
        if size != len(data):
            raise TransportError(f"writing {dest} to the virtual board stored {size} bytes")

    def get(self, src: str) -> bytes:
        with tempfile.NamedTemporaryFile(prefix="mpseal-sim-") as tmp:
            self._call("get", src, tmp.name)
            return read_limited(Path(tmp.name), DEFAULT_LIMITS.artifact_max_length, src)

    def listdir(self, folder: str = "/") -> list[tuple[str, bool, int]]:
        listing = self._call("ls", folder)
        if not isinstance(listing, list):
            raise FormatError("virtual board listing is not a list")
        return listing

    def install(self, blob: bytes, root: TrustRoot) -> artifact.VerifiedRelease:
        """Verify ``blob`` on the host for this board, then copy it and the trust root in."""
        release = artifact.verify(blob, root, board=self.info.board)
        self.put(root.raw, TRUST_ROOT_PATH)
        self.put(blob, INSTALL_PATH)
        return release

    def run(self, heapsize: str | None = None, stream: bool = False,
            timeout: float = 120) -> vm.VmResult:
        """Mount the installed image in the VM and run its entry module."""
        if not any(name == "app.mpseal" for name, _, _ in self.listdir("/mpseal")):
            raise UsageError("nothing is installed on this virtual board; run 'mpseal sim install'")
        return vm.run(vm.runtime_dir() / "simboard.py", [str(self.flash), "run", INSTALL_PATH],
                      heapsize=heapsize or self.info.heapsize, stream=stream, timeout=timeout)
