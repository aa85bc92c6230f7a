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
    (the same choice `mpremote romfs deploy` makes)."""

    def __init__(self, dev, ioctl):
        self.dev = dev
        self.ioctl = ioctl
        self.mem = memoryview(dev)
        self.kind = "block device" if hasattr(dev, "ioctl") else "rom_ioctl"

    def mirror(self, path, r, log, what):
        """The partition holding exactly verified release `r` (its image in file `path`):
        copied there once (when it does not already hash right) -> a memoryview of it."""
        import hashlib

        from mpseal_release import Refused, _hex

        mem = self.mem
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
        for block in range((size + bs - 1) // bs):
            n = min(bs, size - block * bs)
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
