# An SD card for the virtual board: `machine.SDCard` over a card image file on the
# host (FAT, as cards come). Runs in the MicroPython unix port, whose `machine` has
# no SDCard: `install` puts a `machine` module with one in sys.modules, so the
# guard's own `machine.SDCard()` + `os.mount(sd, "/sd")` (mpseal_lockdown.mount_sd)
# runs unchanged, and MicroPython's mount finds the filesystem itself, as on a board.
#
# The stand-in keeps to the documented block protocol of machine.SDCard, nothing more:
# readblocks(n, buf) and writeblocks(n, buf) of whole 512-byte blocks (no offset
# argument), ioctl(op, arg) with 1 init, 2 deinit, 3 sync, 4 block count, 5 block size.
# A stand-in of the protocol, not of a port (docs/ports.md says what ran where).

import sys

BLOCK = 512
EIO = 5

_card = None  # the image file, opened before the board's flash hides the host's files


class SDCard:
    def __init__(self, *args, **kwargs):  # slot, width, pins...: one card here
        if _card is None:
            raise OSError(EIO)  # no card in the slot
        self.f = _card
        self.f.seek(0, 2)
        self.blocks = self.f.tell() // BLOCK

    def _check(self, n, buf):
        if len(buf) % BLOCK or n < 0 or n + len(buf) // BLOCK > self.blocks:
            raise OSError(EIO)

    def readblocks(self, n, buf):
        self._check(n, buf)
        self.f.seek(n * BLOCK)
        self.f.readinto(buf)

    def writeblocks(self, n, buf):
        self._check(n, buf)
        self.f.seek(n * BLOCK)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return BLOCK
        if op == 3:
            self.f.flush()
        return 0


class _Module:
    pass


def install(path):
    """Insert the card in PATH: `import machine` then gives a machine with SDCard."""
    global _card
    import machine

    _card = open(path, "r+b")
    fake = _Module()
    for name in dir(machine):
        if not name.startswith("__"):
            setattr(fake, name, getattr(machine, name))
    fake.SDCard = SDCard
    sys.modules["machine"] = fake
