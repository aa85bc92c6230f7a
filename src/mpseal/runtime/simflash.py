# A flash chip for the virtual board: a littlefs block device backed by an image
# file on the host. Runs in the MicroPython unix port.
#
# Power-cut testing: give `cut_after=N` and the N-th block write (1-based) is the
# last one that reaches the file; with `tear=True` that write stops half-way.
# Then PowerCut (a BaseException, so app code cannot swallow it) is raised and
# the board must be "rebooted" by starting a new VM on the same image.

BLOCK_SIZE = 4096
_IOCTL_COUNT = 4
_IOCTL_SIZE = 5
_IOCTL_ERASE = 6


_ERASED = b"\xff" * 256  # erase in small pieces: the emulated chip costs little heap


class PowerCut(BaseException):
    pass


class FlashBlockDev:
    def __init__(self, path, block_size=BLOCK_SIZE, cut_after=0, tear=False, eio_after=0):
        self.f = open(path, "r+b")
        self.bs = block_size
        self.f.seek(0, 2)
        self.blocks = self.f.tell() // block_size
        self.writes = 0
        self.cut_after = cut_after
        self.tear = tear
        self.eio_after = eio_after  # from this block operation on, the flash fails (EIO)
        self.ops = 0

    def _op(self):
        self.ops += 1
        if self.eio_after and self.ops >= self.eio_after:
            raise OSError(5)

    def readblocks(self, block, buf, offset=0):
        self._op()
        self.f.seek(block * self.bs + offset)
        self.f.readinto(buf)

    def _write(self, pos, data, repeat=1):
        # One program (or erase) operation: `data` written `repeat` times at `pos`.
        self._op()
        if self.cut_after and self.writes >= self.cut_after:
            raise PowerCut()
        self.writes += 1
        last = self.cut_after and self.writes == self.cut_after
        total = len(data) * repeat
        stop = total // 2 if last and self.tear else total
        self.f.seek(pos)
        done = 0
        while done < stop:
            n = min(len(data), stop - done)
            self.f.write(data if n == len(data) else data[:n])
            done += n
        if last:
            raise PowerCut()

    def writeblocks(self, block, buf, offset=None):
        self._write(block * self.bs + (offset or 0), buf)

    def ioctl(self, op, arg):
        if op == _IOCTL_COUNT:
            return self.blocks
        if op == _IOCTL_SIZE:
            return self.bs
        if op == _IOCTL_ERASE:
            self._write(arg * self.bs, _ERASED, self.bs // len(_ERASED))
        return 0
