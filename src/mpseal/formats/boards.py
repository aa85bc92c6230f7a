"""What mpseal knows of each target board: port, native arch, .mpy version, ROMFS support."""

from __future__ import annotations

from dataclasses import dataclass

from mpseal.errors import ConfigError

# .mpy ABI written by MicroPython >= 1.23 (bytecode version 6, sub-version 3).
MPY_DEFAULT = "6.3"
MPY_VERSIONS = ("6.1", "6.2", "6.3")


@dataclass(frozen=True)
class Board:
    name: str
    port: str
    arch: str  # mpy-cross -march value for @native / @viper code
    mpy: str = MPY_DEFAULT
    romfs_partition: bool = False  # the port's stock builds can have a ROMFS partition
    description: str = ""
    # Bytes of the stock firmware's filesystem, where the guard keeps its slots; None when
    # it varies too much by board to guess ([build] filesystem_size then sets it).
    filesystem: int | None = None


BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        # ESP32_GENERIC's 4 MiB partition table: vfs 0x200000 bytes (larger flash: set
        # [build] filesystem_size). RPI_PICO: MICROPY_HW_FLASH_STORAGE_BYTES = 1408 KiB.
        Board(
            "esp32",
            "esp32",
            "xtensawin",
            romfs_partition=True,
            description="ESP32 (Xtensa LX6)",
            filesystem=2048 * 1024,
        ),
        Board(
            "esp32s3",
            "esp32",
            "xtensawin",
            romfs_partition=True,
            description="ESP32-S3 (LX7)",
            filesystem=2048 * 1024,
        ),
        Board(
            "rp2",
            "rp2",
            "armv6m",
            romfs_partition=True,
            description="RP2040 (Cortex-M0+)",
            filesystem=1408 * 1024,
        ),
        Board("rp2350", "rp2", "armv7emsp", romfs_partition=True, description="RP2350 (M33)"),
        Board(
            "stm32", "stm32", "armv7emsp", romfs_partition=True, description="STM32F4/F7 (pyboard)"
        ),
        Board("openmv", "stm32", "armv7emdp", romfs_partition=True, description="OpenMV (STM32H7)"),
        Board(
            "unix",
            "unix",
            "x64",
            description="MicroPython unix port: the virtual board",
            filesystem=2048 * 1024,
        ),  # `mpseal sim create`'s default flash
    )
}


def get_board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown board {name!r}; choose one of: {', '.join(sorted(BOARDS))}"
        ) from None
