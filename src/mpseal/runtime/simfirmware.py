# What a virtual board's firmware has, for testing the guard's feature detection on
# the unix VM: `simboard.py FLASH --firmware SPEC ...` installs these before the
# guard runs. SPEC is a comma list of:
#
#   no-vfsrom     vfs.VfsRom is missing (stock rp2 and esp32, most stm32)
#   no-sha256     hashlib.sha256 is missing
#   romfs-stm32   a 256 KiB ROMFS partition behind vfs.rom_ioctl with the stm32/esp32
#                 write protocol: (1) count, (2, 0) its memory, (3, 0, len) prepare
#                 (erase; answers the minimum write size), (4, 0, offset, buf) write,
#                 (5, 0) finish
#   romfs-rp2     the same partition as rp2 hands it out: rom_ioctl(2, 0) is a block
#                 device (ioctl 4/5/6, writeblocks), rom_ioctl(3|4|5) answer -22
#
# The partition lives in FLASH.rom beside the flash image, so it survives power cycles.
# Stand-ins: a test of the protocol, not of a port (docs/ports.md says what ran where).

import sys

import vfs

ROM_SIZE = 256 * 1024
ROM_BLOCK = 4096
EINVAL = 22


class _Module:
    pass


class _Rom:
    # The file is opened now: once the board's flash is mounted at / the host's files vanish.
    def __init__(self, path):
        self.buf = bytearray(b"\xff" * ROM_SIZE)
        try:
            with open(path, "rb") as f:
                f.readinto(self.buf)
        except OSError:
            with open(path, "wb") as f:
                f.write(self.buf)
        self.f = open(path, "r+b")

    def save(self):
        self.f.seek(0)
        self.f.write(self.buf)
        self.f.flush()


class FlashDev(bytearray):
    """rp2.Flash as far as the guard uses it: the buffer protocol over the partition,
    ioctl(4|5|6, arg), writeblocks(block, buf[, offset])."""

    def ioctl(self, op, arg):
        if op == 4:
            return len(self) // ROM_BLOCK
        if op == 5:
            return ROM_BLOCK
        if op == 6:
            self[arg * ROM_BLOCK : (arg + 1) * ROM_BLOCK] = b"\xff" * ROM_BLOCK
            self.rom_save()
            return 0
        return None

    def writeblocks(self, block, buf, offset=None):
        pos = block * ROM_BLOCK
        if offset is None:
            self[pos : pos + len(buf)] = b"\xff" * len(buf)
        else:
            pos += offset
        for i in range(len(buf)):  # NOR flash: programming only clears bits
            self[pos + i] &= buf[i]
        self.rom_save()


def _rom_ioctl_stm32(rom):
    state = {"prepared": 0}

    def rom_ioctl(op, *args):
        if op == 1:
            return 1
        if args and args[0] != 0:
            return -EINVAL
        if op == 2:
            return memoryview(rom.buf)
        if op == 3:
            n = args[1]
            if n > ROM_SIZE:
                return -EINVAL
            rom.buf[: (n + ROM_BLOCK - 1) // ROM_BLOCK * ROM_BLOCK] = b"\xff" * (
                (n + ROM_BLOCK - 1) // ROM_BLOCK * ROM_BLOCK)
            state["prepared"] = n
            return 4  # minimum write size, as stm32 answers
        if op == 4:
            off, buf = args[1], args[2]
            if not state["prepared"] or off + len(buf) > ROM_SIZE or off % 4 or len(buf) % 4:
                return -EINVAL
            for i in range(len(buf)):
                rom.buf[off + i] &= buf[i]
            return 0
        if op == 5:
            state["prepared"] = 0
            rom.save()
            return 0
        return -EINVAL

    return rom_ioctl


def _rom_ioctl_rp2(rom):
    dev = FlashDev(rom.buf)

    def save():
        rom.f.seek(0)
        rom.f.write(dev)
        rom.f.flush()

    dev.rom_save = save

    def rom_ioctl(op, *args):
        if op == 1:
            return 1
        if op == 2 and args == (0,):
            return dev
        return -EINVAL

    return rom_ioctl


def install(spec, flash_path):
    """Replace the `vfs` (and `hashlib`) modules the guard imports with ones shaped like SPEC."""
    if not spec:
        return
    parts = spec.split(",")
    fake = _Module()
    for name in dir(vfs):
        if not name.startswith("__") and not (name == "VfsRom" and "no-vfsrom" in parts):
            setattr(fake, name, getattr(vfs, name))
    for kind in ("stm32", "rp2"):
        if "romfs-" + kind in parts:
            rom = _Rom(flash_path + ".rom")
            fake.rom_ioctl = (_rom_ioctl_stm32 if kind == "stm32" else _rom_ioctl_rp2)(rom)
    sys.modules["vfs"] = fake
    if "no-sha256" in parts:
        import hashlib

        h = _Module()
        for name in dir(hashlib):
            if not name.startswith("__") and name != "sha256":
                setattr(h, name, getattr(hashlib, name))
        sys.modules["hashlib"] = h
