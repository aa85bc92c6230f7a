# Writing a ROMFS partition with the protocol the port answers to (mpseal_port.py
# hands one out; the guard mirrors a verified image there). Loaded only on firmware
# that has a ROMFS partition, so other boards spend no RAM on it.


class Partition:
    """A ROMFS partition: `mem` (a memoryview of it, memory-mapped) and `write(f, n)`, which
    copies the next n bytes of file f to its start with the protocol this port answers to:

    rp2      vfs.rom_ioctl(2, 0) is an rp2.Flash block device (it has .ioctl):
             erase with ioctl(6, block), program with writeblocks(block, buf, 0);
             rom_ioctl(3|4|5) answer -22 there
    stm32, esp32  rom_ioctl(2, 0) is the partition's memory; rom_ioctl(3, 0, n)
             prepares (erases) and answers the minimum write size, rom_ioctl(4, 0,
             offset, buf) writes, rom_ioctl(5, 0) finishes
    (the same choice `mpremote romfs deploy` makes).

    `base`: where the app's mirror starts. 0, or, when the guard runs from the partition
    (guard_in_rom), the guard's ROMFS image at its head rounded up to whole erase blocks
    (GUARD_BLOCK: the host's guard_install.GUARD_BLOCK, the same rule)."""

    def __init__(self, dev, ioctl, guard_in_rom=False):
        self.dev = dev
        self.ioctl = ioctl
        self.mem = memoryview(dev)
        self.kind = "block device" if hasattr(dev, "ioctl") else "rom_ioctl"
        self.base = guard_region(self.mem) if guard_in_rom else 0

    def mount(self, path, r, log, what):
        """A VfsRom of the partition holding verified release `r` (mirror()), or None when
        it does not fit after the guard's image (logged: the guard serves it file by file)."""
        import vfs

        # (the mirror's first block must not be the guard's last: base in whole blocks)
        if r.size > len(self.mem) - self.base or (self.base and self.base % self.dev.ioctl(5, 0)):
            log("image does not fit the ROMFS partition: verified-files mount")
            return None
        if r.slot_file is not None:  # kept open by the signature check, for verified-files
            r.slot_file.close()
            r.slot_file = None
        return vfs.VfsRom(self.mirror(path, r, log, what))

    def mirror(self, path, r, log, what):
        """The partition holding exactly verified release `r` (its image in file `path`):
        copied there once (when it does not already hash right) -> a memoryview of it."""
        import hashlib

        from mpseal_release import Refused, _hex

        mem = self.mem[self.base :]
        if r.size > len(mem):
            raise Refused("image does not fit the ROMFS partition")
        if _hex(hashlib.sha256(mem[: r.size]).digest()) != r.sha256:
            log("copying %s to the ROMFS partition (%s)" % (what, self.kind))
            with open(path, "rb") as f:
                f.seek(r.offset)
                self.write(f, r.size)
            if _hex(hashlib.sha256(mem[: r.size]).digest()) != r.sha256:
                raise Refused("ROMFS partition does not read back the verified image")
        return mem[: r.size]

    def write(self, f, size):
        if self.kind == "block device":
            self._write_blocks(f, size)
        else:
            self._write_ioctl(f, size)

    def _write_blocks(self, f, size):
        bs = self.dev.ioctl(5, 0)
        buf = bytearray(bs)
        first = self.base // bs
        for block in range(first, first + (size + bs - 1) // bs):
            n = min(bs, size - (block - first) * bs)
            got = f.readinto(memoryview(buf)[:n])
            if got != n:
                raise OSError(5)
            for i in range(n, bs):
                buf[i] = 0xFF
            if bytes(self.mem[block * bs : (block + 1) * bs]) == buf:
                continue  # already holds these bytes: spare the flash an erase
            self.dev.ioctl(6, block)
            self.dev.writeblocks(block, buf, 0)

    def _write_ioctl(self, f, size):
        min_write = self.ioctl(3, 0, size)
        if min_write < 0:
            raise OSError(-min_write)
        chunk = max(4096, min_write)  # as mpremote: whole chunks, zero-padded
        buf = bytearray(chunk)
        off = 0
        while off < size:
            n = min(chunk, size - off)
            got = f.readinto(memoryview(buf)[:n])
            if got != n:
                raise OSError(5)
            for i in range(n, chunk):
                buf[i] = 0
            err = self.ioctl(4, 0, off, buf)
            if err is not None and err < 0:
                raise OSError(-err)
            off += n
        err = self.ioctl(5, 0)
        if err is not None and err < 0:
            raise OSError(-err)


GUARD_AT = "/.mpseal-guard"


def keep_guard(at=GUARD_AT):
    """The app takes /rom: the guard's image (the partition's head, where the guard runs
    from) stays mounted at `at`, in /rom/lib's place on sys.path, for the modules the guard
    and the app load later (staging, the update client). Loaded only on such a board."""
    import sys

    import vfs
    from mpseal_port import rom_partition

    part = rom_partition(True)
    try:
        vfs.mount(vfs.VfsRom(part.mem[: part.base]), at)
    except OSError:
        pass  # mounted already in this session
    sys.path[:] = [at + "/lib" if p == "/rom/lib" else p for p in sys.path if p != "/rom"]


GUARD_BLOCK = 4096  # the guard's region in a partition: whole blocks of this size


def guard_region(mem):
    """Bytes of the ROMFS image at the head of `mem` (header d2 cd 31, then its length as a
    base-128 uint, formats/romfs.py), rounded up to GUARD_BLOCK; 0 without an image."""
    if bytes(mem[:3]) != b"\xd2\xcd\x31":
        return 0
    n = 0
    for i in range(3, 8):
        b = mem[i]
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            n += i + 1
            return (n + GUARD_BLOCK - 1) // GUARD_BLOCK * GUARD_BLOCK
    return 0
