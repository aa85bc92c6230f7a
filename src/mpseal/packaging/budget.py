"""Does a build fit the board? Checked at build time, not found on the device as OSError 28.

The boot guard keeps releases as files in the device's filesystem. At the peak of an
update over the air the filesystem holds, at once: the committed slot, the inactive
slot's old release, the download, and the verified copy being written into the slot
(mpseal_ota.py and mpseal_guard.stage). A board also keeps the guard, its state, its
log, identity and config beside them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpseal.errors import ConfigError
from mpseal.formats.config import ProjectConfig

UPDATE_COPIES = 4  # committed slot + old inactive slot + download + verified copy
RESERVED = 64 * 1024  # guard, state, log, identity, config, littlefs metadata
GUARD_MAX_IMAGE = 4 * 1024 * 1024  # the guard's default max_image (device/guard_install.py)


@dataclass(frozen=True)
class Budget:
    board: str
    filesystem: int | None  # bytes; None: unknown for this board
    needed: int  # bytes at the peak of an update
    source: str  # where the filesystem size came from

    @property
    def per_release(self) -> int | None:
        if self.filesystem is None:
            return None
        return max(0, (self.filesystem - RESERVED) // UPDATE_COPIES)

    def to_dict(self) -> dict[str, object]:
        return {
            "board": self.board,
            "filesystem": self.filesystem,
            "needed": self.needed,
            "per_release": self.per_release,
            "source": self.source,
        }


def check(cfg: ProjectConfig, artifact_size: int) -> Budget:
    """The budget of ``cfg.board`` for an artifact of ``artifact_size`` bytes.

    Raises ConfigError when the artifact cannot be updated on that board.
    """
    board = cfg.board
    fs: int | None
    if board.name in cfg.filesystem_size:
        fs, source = cfg.filesystem_size[board.name], "[build] filesystem_size"
    elif "*" in cfg.filesystem_size:
        fs, source = cfg.filesystem_size["*"], "[build] filesystem_size"
    else:
        fs, source = board.filesystem, f"stock {board.name} firmware"
    budget = Budget(board.name, fs, UPDATE_COPIES * artifact_size + RESERVED, source)
    if artifact_size > GUARD_MAX_IMAGE:
        raise ConfigError(
            f"the {board.name} build is {_kib(artifact_size)}: the boot guard "
            f"accepts at most {_kib(GUARD_MAX_IMAGE)}; make the app smaller"
        )
    if fs is not None and budget.needed > fs:
        raise ConfigError(
            f"the {board.name} build ({_kib(artifact_size)}) does not fit: an update needs "  # noqa: S608 - a message
            f"{UPDATE_COPIES} copies plus {_kib(RESERVED)} = {_kib(budget.needed)} of the "
            f"{_kib(fs)} filesystem ({source}); at most {_kib(budget.per_release or 0)} per "
            "release. Make the app smaller, or set [build] filesystem_size if the device's "
            "filesystem is larger"
        )
    return budget


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1048576:,.1f} MiB"
